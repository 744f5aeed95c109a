"""Evaluate any pretrained backbone on any dataset: a run directory or an exported backbone in, results.json out.

    python -m pretextlab.evaluate outputs/runs/<run> data=cifar10_jpeg               # linear probe
    python -m pretextlab.evaluate outputs/runs/<run>/export data=voc2007 eval=voc07_svm data.source.root=/data/voc
    python -m pretextlab.evaluate -m pretrained=<run A>,<run B> data=cifar10_jpeg    # a sweep
    python -m pretextlab.evaluate <run A> <run B> data=cifar10_jpeg                  # the same sweep

The backbone comes from a run directory written by ``pretextlab.train`` (its ``checkpoints/last.ckpt``,
read weights-only through :mod:`pretextlab.export`; nothing is unpickled) or from an export made by
``python -m pretextlab.export`` (safetensors + JSON). How images enter it — the normalisation
statistics it was pretrained with, or the Lab L channel for colorization, and its image size — comes
from the backbone's own description, not from the evaluation data. ``image_size=auto`` (default)
resizes the evaluation images to the backbone's pretraining size; ``image_size=224`` (or
``data.source.image_size=224``) asks for another size, and results.json and the table say so.

A random-init run (``task=none``) has no checkpoint: its backbone is rebuilt from the run's config
with the run's seed, as train.py builds it (the same draw of weights), and normalised with the
evaluation data's statistics (it never saw any data of its own).

Each evaluation writes its own run directory (``outputs/evaluations/...``) with ``results.json``:
the protocols' results, which pretrained backbone was evaluated (path, task, backbone, pretraining
data, seed, weights checksum) and how its inputs were prepared. ``python -m pretextlab.table``
shows these as columns of the pretraining row ("pretrained on X, evaluated on Y").

Bad input (a missing path, a folder that is neither a run nor an export, a foreign or damaged
checkpoint or export) stops with one line ``pretextlab: error: ...`` and exit status 2.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pretextlab.config import ConfigError, config_dir, redact
from pretextlab.export import DEFAULT_INPUT_KIND, INPUT_KINDS, ExportError
from pretextlab.train import ExistingResultsError, _existing_results, _lookup, _provenance, resolved_config

log = logging.getLogger("pretextlab.evaluate")

RESULTS_FILE = "results.json"
#: ``results.json["kind"]`` of an evaluation of a pretrained backbone (the table's transfer columns).
TRANSFER_KIND = "transfer"
#: How each input kind turns [0, 1] RGB into the backbone's input, and its channel count.
INPUT_CHANNELS = {"rgb_normalized": 3, "lab_l": 1}


# -- input preparation ------------------------------------------------------------------------------
class InputPreparation:
    """[0, 1] RGB images → what the backbone was pretrained on (see ``export.INPUT_KINDS``).

    ``rgb_normalized``: channel standardisation with the given statistics (the pretraining data's);
    ``lab_l``: the L channel of CIE Lab scaled to [-1, 1] (``L / 50 - 1``), colorization's input.
    Holds no trainable state; its ``__qualname__`` names kind and statistics, so that the feature
    cache fingerprint (:func:`pretextlab.evaluation.feature_fingerprint`) tells preparations apart.
    """

    def __init__(self, kind: str, mean: list[float] | None = None, std: list[float] | None = None) -> None:
        if kind not in INPUT_CHANNELS:
            raise ExportError(f"the backbone's input kind {kind!r} is unknown to this pretextlab "
                              f"(it knows {sorted(INPUT_CHANNELS)})")
        if kind == "rgb_normalized" and (mean is None or std is None or len(mean) != 3 or len(std) != 3):
            raise ExportError(f"input kind rgb_normalized needs 3 mean and 3 std values, got {mean}, {std}")
        self.kind = kind
        self.mean = torch.tensor([float(v) for v in mean], dtype=torch.float32) if mean is not None else None
        self.std = torch.tensor([float(v) for v in std], dtype=torch.float32) if std is not None else None
        self.__qualname__ = f"InputPreparation({kind}, mean={mean}, std={std})"

    @property
    def channels(self) -> int:
        return INPUT_CHANNELS[self.kind]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "lab_l":
            from pretextlab.ops.color import rgb_to_lab

            return rgb_to_lab(images)[:, :1] / 50.0 - 1.0
        from pretextlab.ops.augment import normalize

        assert self.mean is not None and self.std is not None
        return normalize(images, self.mean, self.std)


# -- the pretrained backbone -----------------------------------------------------------------------
@dataclass
class Pretrained:
    """A loaded backbone and everything results.json records about where it came from."""

    backbone: Any
    info: dict[str, Any]
    input_kind: str
    mean: list[float] | None
    std: list[float] | None
    image_size: int | None
    notes: list[str] = field(default_factory=list)


def _is_export(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".safetensors", ".json")
    return (path / "backbone.safetensors").is_file() or (path / "backbone.json").is_file()


def load_pretrained(path: str | Path, checkpoint: str | None = None) -> Pretrained:
    """The backbone at ``path`` (a run directory or an export) with its description; ExportError when
    ``path`` is neither or its files are not what they claim."""
    import json

    from pretextlab.export import export_backbone, load_backbone, read_metadata

    path = Path(str(path)).expanduser()
    if not path.exists():
        raise ExportError(f"pretrained path {path} does not exist; give a run directory (written by "
                          "pretextlab.train) or an export (python -m pretextlab.export)")
    path = path.resolve()
    if path.is_dir() and (path / RESULTS_FILE).is_file():
        try:
            results = json.loads((path / RESULTS_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ExportError(f"{path / RESULTS_FILE} is not valid JSON: {error}") from error
        if not isinstance(results, dict):
            raise ExportError(f"{path / RESULTS_FILE} is not a run's results (not a JSON object)")
        if results.get("kind") == TRANSFER_KIND:
            raise ExportError(f"{path} is an evaluation written by pretextlab.evaluate, not a pretraining run; "
                              f"evaluate the run it names ({(results.get('pretrained') or {}).get('path')})")
        if results.get("status") != "ok":
            raise ExportError(f"the run at {path} did not finish (status: {str(results.get('status')).splitlines()[0]}); "
                              "evaluate a finished run")
        if results.get("task") == "none" and checkpoint is None and not (path / "checkpoints" / "last.ckpt").exists():
            return _random_init(path, results)
        with tempfile.TemporaryDirectory(prefix="pretextlab-evaluate-") as tmp:
            # The same weights-only reading and the same description as an export, kept in memory only.
            weights = export_backbone(path, output=Path(tmp) / "backbone.safetensors", checkpoint=checkpoint)
            backbone = load_backbone(weights)
            metadata = read_metadata(weights)
        return _from_metadata(backbone, metadata, path, "run", results)
    if _is_export(path):
        if checkpoint is not None:
            raise ExportError(f"checkpoint={checkpoint} applies to a run directory, but {path} is an export")
        backbone = load_backbone(path)
        return _from_metadata(backbone, read_metadata(path), path, "export", None)
    raise ExportError(f"{path} is neither a run directory (results.json + checkpoints/last.ckpt, written by "
                      "pretextlab.train) nor an exported backbone (backbone.safetensors + backbone.json, written "
                      "by python -m pretextlab.export)")


def _from_metadata(backbone: Any, metadata: dict[str, Any], path: Path, kind: str,
                   results: dict[str, Any] | None) -> Pretrained:
    source = metadata.get("input") or {}
    input_kind = str(source.get("kind") or DEFAULT_INPUT_KIND)
    results = results or {}
    info = {
        "path": str(path),
        "kind": kind,
        "task": results.get("task", metadata.get("task")),
        "backbone": results.get("backbone", (metadata.get("build_config") or {}).get("name")),
        "data": results.get("data", metadata.get("data")),
        "seed": results.get("seed", metadata.get("seed")),
        "run_status": results.get("status", metadata.get("run_status")),
        "epochs": results.get("epochs"),
        "checkpoint": metadata.get("checkpoint"),
        "weights": "checkpoint (weights-only)" if kind == "run" else "export (safetensors)",
        "weights_sha256": metadata.get("weights_sha256"),
        "build_config": metadata.get("build_config"),
        "stage": metadata.get("stage"),
    }
    if kind == "run":
        info["headline"] = results.get("headline")
    size = source.get("image_size")
    return Pretrained(backbone, info, input_kind, source.get("mean"), source.get("std"),
                      int(size) if isinstance(size, (int, float)) else None)


def _random_init(path: Path, results: dict[str, Any]) -> Pretrained:
    """The random backbone of a ``task=none`` run: rebuilt as train.py built it (seeded, then built)."""
    import lightning as L

    from pretextlab.backbones import build_backbone

    config = results.get("config") or {}
    build_kwargs = {k: v for k, v in (config.get("backbone") or {}).items() if not k.startswith("_")}
    if "name" not in build_kwargs:
        raise ExportError(f"{path / RESULTS_FILE} has no config.backbone to rebuild the random-init backbone from")
    seed = int(results.get("seed", config.get("seed", 0)))
    # train.py seeds, builds the datamodule (which draws nothing from torch's RNG), then the backbone.
    L.seed_everything(seed, workers=True)
    try:
        backbone = build_backbone(**build_kwargs).eval()
    except Exception as error:
        raise ExportError(f"cannot rebuild the backbone of {path}: {error}") from error
    size = ((config.get("data") or {}).get("source") or {}).get("image_size")
    info = {
        "path": str(path), "kind": "run", "task": "none", "backbone": results.get("backbone"),
        "data": results.get("data"), "seed": seed, "run_status": results.get("status"), "epochs": 0,
        "checkpoint": None, "weights": f"random init, rebuilt from the run's config with seed {seed}",
        "weights_sha256": None, "build_config": dict(getattr(backbone, "build_config", build_kwargs)), "stage": None,
        "headline": results.get("headline"),
    }
    return Pretrained(backbone, info, INPUT_KINDS.get("none", DEFAULT_INPUT_KIND), None, None,
                      int(size) if isinstance(size, (int, float)) else None,
                      notes=["random init never saw data: inputs normalised with the evaluation data's statistics"])


# -- config -------------------------------------------------------------------------------------------
def pretrained_name(value: Any) -> str:
    """A short folder-safe name for a pretrained path: the run's folder, ``<run>-export`` for its export."""
    path = Path(str(value).rstrip("/"))
    if path.suffix in (".safetensors", ".json"):
        if path.stem != "backbone":
            return _folder_safe(path.stem)
        path = path.parent
    name = f"{path.parent.name}-export" if path.name == "export" else path.name
    return _folder_safe(name)


def _folder_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "pretrained"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pretrained_name"):
        OmegaConf.register_new_resolver("pretrained_name", pretrained_name)


register_resolvers()


def compose_evaluate(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``conf/evaluate.yaml`` composed with ``overrides`` (Hydra's compose API), for tests and notebooks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


def validate_evaluate_config(cfg: DictConfig) -> None:
    """The rules of :mod:`pretextlab.config` that apply (data.*, eval.*, seed), plus this entry's keys."""
    from pretextlab.config import _check_rules, _output_problems

    if OmegaConf.is_missing(cfg, "pretrained") or not str(cfg.get("pretrained") or "").strip():
        raise ConfigError("no pretrained backbone given: python -m pretextlab.evaluate <run dir | export dir> "
                          "[overrides] (or pretrained=<path>)")
    problems = _check_rules(cfg)
    size = cfg.get("image_size")
    if not (size == "auto" or (isinstance(size, int) and not isinstance(size, bool) and size >= 8)):
        problems.append(f"image_size={size!r} is not allowed: must be auto (the backbone's own size) or an integer >= 8")
    if cfg.get("device") not in ("auto", "cpu", "cuda"):
        problems.append(f"device={cfg.get('device')!r} is not allowed: must be one of ['auto', 'cpu', 'cuda']")
    headline = str(cfg.eval.get("headline", "none"))
    protocols = list((cfg.eval.get("protocols") or {}).keys())
    if headline != "none" and headline.split("/")[0] not in protocols:
        problems.append(f"eval.headline={headline!r} is not allowed: must be none or <protocol>/<metric> with a "
                        f"protocol of eval.protocols {protocols}")
    if not problems:
        problems = _output_problems(cfg)
    if problems:
        message = problems[0] + "".join(f"\n  also: {p}" for p in problems[1:])
        raise ConfigError(message, problems)


# -- the run -------------------------------------------------------------------------------------------
def _input_description(pretrained: Pretrained, size: int | None, chosen_by: str, data_mean: Any,
                       data_std: Any) -> tuple[InputPreparation, dict[str, Any]]:
    mean, std, statistics_from = pretrained.mean, pretrained.std, "the backbone's pretraining data"
    if pretrained.input_kind == "rgb_normalized" and (mean is None or std is None):
        mean, std, statistics_from = list(data_mean), list(data_std), "the evaluation data (the backbone has none)"
    preparation = InputPreparation(pretrained.input_kind, mean if pretrained.input_kind != "lab_l" else None,
                                   std if pretrained.input_kind != "lab_l" else None)
    own = pretrained.image_size
    mismatch = None
    if own is not None and size is not None and own != size:
        mismatch = f"a {own} px backbone evaluated on {size} px images"
    description = {
        "kind": pretrained.input_kind,
        "mean": mean if pretrained.input_kind == "rgb_normalized" else None,
        "std": std if pretrained.input_kind == "rgb_normalized" else None,
        "statistics_from": statistics_from if pretrained.input_kind == "rgb_normalized" else None,
        "image_size": size,
        "pretrained_image_size": own,
        "image_size_chosen_by": chosen_by,
        "mismatch": mismatch,
        "notes": pretrained.notes,
    }
    return preparation, description


def _check_backbone_takes(encoder: Any, channels: int, size: int, name: str) -> None:
    """A forward of two blank images: a backbone that cannot take this size fails here, in one line."""
    try:
        with torch.no_grad():
            encoder.backbone.stage_outputs(torch.zeros(2, channels, size, size))
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"the pretrained {name} backbone cannot process {size} px images ({first}); "
                          "use image_size=auto (its own size) or another size") from error


def _multilabel_problems(datamodule: Any, protocols: dict[str, Any]) -> None:
    if not getattr(datamodule.source, "multilabel", False):
        return
    single = [name for name, protocol in protocols.items() if not getattr(protocol, "multilabel", False)]
    if single:
        raise ConfigError(f"data={datamodule.name} is multi-label, but eval protocol(s) {single} take single-label "
                          "data only; use eval=voc07_svm")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the pretrained backbone named by ``cfg.pretrained``; returns the results dictionary."""
    import lightning as L
    from hydra.utils import instantiate

    from pretextlab.evaluation.runner import evaluate
    from pretextlab.io import atomic_write_json
    from pretextlab.tasks.base import EvaluationEncoder

    validate_evaluate_config(cfg)
    started = time.perf_counter()
    pretrained = load_pretrained(str(cfg.pretrained), cfg.get("checkpoint"))
    if cfg.image_size == "auto":
        size, chosen_by = pretrained.image_size, "auto: the backbone's pretraining size"
        if size is None:
            size, chosen_by = cfg.data.source.get("image_size"), "the evaluation data's (the backbone names none)"
    else:
        size, chosen_by = int(cfg.image_size), f"asked for: image_size={int(cfg.image_size)}"
    if size is not None and "image_size" in cfg.data.source:
        with open_dict(cfg):
            cfg.data.source.image_size = int(size)
    run_dir = Path(cfg.paths.run_dir)
    config = resolved_config(cfg)
    previous = _existing_results(run_dir, config, bool(cfg.get("overwrite", False)))
    if previous is not None:
        log.info("%s already holds finished results for this config: skipping the job", run_dir)
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)

    L.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    protocols = {name: instantiate(p) for name, p in (cfg.eval.protocols or {}).items() if p is not None}
    _multilabel_problems(datamodule, protocols)
    for protocol in protocols.values():
        if hasattr(protocol, "class_names") and protocol.class_names is None:
            names = getattr(datamodule.source, "class_names", None)
            protocol.class_names = list(names) if names is not None and len(names) == datamodule.num_classes else None
    preparation, input_description = _input_description(pretrained, datamodule.image_size, chosen_by,
                                                        datamodule.mean, datamodule.std)
    backbone = pretrained.backbone
    if int(backbone.in_channels) != preparation.channels:
        raise ExportError(f"the backbone takes {backbone.in_channels}-channel images but its input kind "
                          f"{preparation.kind!r} gives {preparation.channels}")
    encoder = EvaluationEncoder(backbone, preparation)
    _check_backbone_takes(encoder, preparation.channels, int(datamodule.image_size), str(pretrained.info["backbone"]))
    if input_description["mismatch"]:
        log.warning("input size mismatch: %s (%s)", input_description["mismatch"], chosen_by)

    results: dict[str, Any] = {
        "status": "running",
        "kind": TRANSFER_KIND,
        "task": pretrained.info["task"],
        "backbone": pretrained.info["backbone"],
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "pretrained": pretrained.info,
        "input": input_description,
    }
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else str(cfg.device)
    eval_start = time.perf_counter()
    results["eval"] = evaluate(encoder, datamodule, protocols, cfg.eval.stages, int(cfg.eval.pool_size), device,
                               cache_dir=run_dir)
    headline_key = str(cfg.eval.headline)
    results["headline"] = {"metric": headline_key, "value": _lookup(results["eval"], headline_key)}
    results["wall_time"] = {"eval": time.perf_counter() - eval_start, "total": time.perf_counter() - started}
    results.update(_provenance())
    results["config"] = config
    results["status"] = "ok"
    atomic_write_json(run_dir / RESULTS_FILE, redact(results))
    return results


def _record_failure(cfg: DictConfig, error: BaseException) -> None:
    """In a sweep, leave a results.json saying the job failed (never over a finished one)."""
    import json

    from pretextlab.io import atomic_write_json

    try:
        path = Path(cfg.paths.run_dir) / RESULTS_FILE
        if path.exists():
            try:
                if json.loads(path.read_text()).get("status") == "ok":
                    return
            except json.JSONDecodeError:
                pass
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        atomic_write_json(path, redact({
            "status": f"failed: {first_line}",
            "kind": TRANSFER_KIND,
            "error_type": type(error).__name__,
            "data": cfg.data.get("name"),
            "seed": cfg.get("seed"),
            "pretrained": {"path": str(cfg.get("pretrained"))},
            "traceback": traceback.format_exc(),
        }))
    except Exception:  # the original error matters more than a failure to record it
        log.exception("could not record the failure")


# -- command line -------------------------------------------------------------------------------------
#: Hydra's own flags that take the next word as their value (``--info`` only for these choices).
_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
                     "--cfg", "-c", "--experimental-rerun"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
                 "--version"}


def _quote(value: str) -> str:
    """A Hydra override value holding ``value`` verbatim (quoted: commas, spaces and '=' stay literal)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def hydra_arguments(argv: list[str]) -> list[str]:
    """The command line with its positional paths turned into ``pretrained=...`` (several: a sweep, ``-m``).

    Raises ConfigError when no backbone is named at all (and the command is not a Hydra help/info call).
    """
    out: list[str] = []
    paths: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in _FLAGS_WITH_VALUE and index + 1 < len(argv):
            out += [word, argv[index + 1]]
            index += 2
            continue
        if word in ("--info", "-i") and index + 1 < len(argv) and argv[index + 1] in _INFO_CHOICES:
            out += [word, argv[index + 1]]
            index += 2
            continue
        is_override = "=" in word or (word.startswith("~") and not word.startswith("~/"))
        if word.startswith("-") or is_override:
            out.append(word)
        else:
            paths.append(word)
        index += 1
    named = any(word.split("=", 1)[0].lstrip("+") == "pretrained" for word in out if "=" in word)
    if paths and named:
        raise ConfigError("give the pretrained backbone either as a path or as pretrained=..., not both")
    if paths:
        out.append("pretrained=" + ",".join(_quote(p) for p in paths))
        if len(paths) > 1 and not ({"-m", "--multirun"} & set(out)):
            out.insert(0, "--multirun")
    elif not named and not (_NO_RUN_FLAGS & set(out)):
        raise ConfigError("no pretrained backbone given: python -m pretextlab.evaluate <run dir | export dir> "
                          "[overrides]  (several paths, or -m pretrained=A,B, make a sweep)")
    return out


#: Errors whose message is the whole story: one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ExportError, ExistingResultsError, ValueError,
                                                FileNotFoundError)


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="evaluate")
    def main(cfg: DictConfig) -> float | None:
        hydra_config = HydraConfig.get()
        multirun = hydra_config.mode == RunMode.MULTIRUN
        asked = [o.split("=", 1)[1] for o in hydra_config.overrides.task if o.startswith("data.source.image_size=")]
        if asked and cfg.get("image_size") == "auto":
            with open_dict(cfg):  # data.source.image_size=N on the command line is a request for N px
                cfg.image_size = int(cfg.data.source.image_size)
        try:
            results = run(cfg)
        except Exception as raised:
            error: BaseException = raised
            while isinstance(error, InstantiationException) and error.__cause__ is not None:
                error = error.__cause__
            if multirun:
                _record_failure(cfg, error)
                log.error("job failed: %s (the sweep continues)", redact((str(error).splitlines() or [""])[0]))
                return math.nan
            if isinstance(error, USER_ERRORS) and not os.environ.get("PRETEXTLAB_TRACEBACK"):
                print(f"pretextlab: error: {redact((str(error).strip().splitlines() or [type(error).__name__])[0])}",
                      file=sys.stderr)
                sys.exit(2)
            raise
        value = results.get("headline", {}).get("value")
        return float(value) if value is not None else None

    main()


def cli(argv: list[str] | None = None) -> None:
    """``python -m pretextlab.evaluate``: positional paths → ``pretrained=``, then Hydra."""
    try:
        arguments = hydra_arguments(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as error:
        print(f"pretextlab: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *arguments]
    _hydra_main()


if __name__ == "__main__":
    cli()
