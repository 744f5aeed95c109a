"""Evaluate any pretrained backbone on any dataset: a run directory or an exported backbone in, results.json out.

    python -m pretextlab.evaluate outputs/runs/<run> data=cifar10_jpeg               # linear probe
    python -m pretextlab.evaluate outputs/runs/<run>/export data=voc2007 eval=voc07_svm data.source.root=/data/voc
    python -m pretextlab.evaluate -m pretrained=<run A>,<run B> data=cifar10_jpeg    # a sweep
    python -m pretextlab.evaluate <run A> <run B> data=cifar10_jpeg                  # the same sweep

The backbone comes from a run directory written by ``pretextlab.train`` (its results.json, read as a
:class:`~pretextlab.results.ResultsRecord`, and its ``checkpoints/last.ckpt``, read weights-only by
:func:`pretextlab.checkpoints.read_checkpoint`: nothing is unpickled, and there is no way to ask for
full unpickling here) or from an export made by ``python -m pretextlab.export`` (safetensors + JSON).
How images enter it — the normalisation statistics it was pretrained with, or the Lab L channel for
colorization, and its image size — comes from the backbone's own description, not from the
evaluation data. ``image_size=auto`` (default) resizes the evaluation images to the backbone's
pretraining size; ``image_size=224`` (or ``data.source.image_size=224``) asks for another size, and
results.json and the table say so.

A random-init run (``task=none``) has no checkpoint: its backbone is rebuilt from the run's config
with the run's seed, as train.py builds it (the same draw of weights), and normalised with the
evaluation data's statistics (it never saw any data of its own). ``eval.bn_recalibration=auto``
re-estimates its BatchNorm statistics on the evaluation data's training images, as train.py does
for the random-init row.

Each evaluation writes its own run directory (``outputs/evaluations/...``) with ``results.json``
(``"kind": "transfer"``): the protocols' results, which pretrained backbone was evaluated (path,
task, backbone, pretraining data, seed, weights checksum) and how its inputs were prepared. The
directory goes through :func:`pretextlab.rundir.open_run_dir` as train's do: locked for the job,
finished results of the same config (which includes the weights' checksum) skip the job, those of
another config are refused unless ``overwrite=true``. ``python -m pretextlab.table`` shows these
results as columns of the pretraining row ("pretrained on X, evaluated on Y").

Bad input (a missing path, a misspelt key, a folder that is neither a run nor an export, a foreign
or damaged checkpoint or export) stops with one line ``pretextlab: error: ...`` and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pretextlab.config import ConfigError, quoted_value
from pretextlab.redaction import redact
from pretextlab.export import DEFAULT_INPUT_KIND, ExportError
from pretextlab.task_info import INPUT_KIND_CHANNELS, input_kind_of
from pretextlab.paths import config_dir
from pretextlab.provenance import provenance
from pretextlab.results import (SCHEMA_VERSION, TRANSFER_KIND, ResultsError, ResultsRecord, chosen_options, lookup_metric,
                                write_results)
from pretextlab.rundir import RESULTS_FILE, JobNotRunError, hydra_choices, open_run_dir, resolved_config

# pretextlab.checkpoints and pretextlab.train (Lightning) are imported where they are used: a command
# line refused before any checkpoint is read answers in the time Python and torch take to start.

log = logging.getLogger("pretextlab.evaluate")

#: The key results.json's recorded config gains: the checksum of the weights evaluated. A re-run after
#: the pretrained run changed is then another config (refused, or replaced with overwrite=true), never
#: skipped as if it had been evaluated already.
WEIGHTS_KEY = "pretrained_weights_sha256"
#: Errors of the input itself (config, pretrained path, its files): one line, no traceback; in a
#: single run nothing is recorded for them (a sweep records them, so the table lists the job).
BAD_INPUT: tuple[type[BaseException], ...] = (ConfigError, ExportError, ResultsError)
#: Errors whose message is the whole story: one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (*BAD_INPUT, JobNotRunError, ValueError, FileNotFoundError)


# -- input preparation ------------------------------------------------------------------------------
class InputPreparation:
    """[0, 1] RGB images → what the backbone was pretrained on (the kind its task declared: ``task_info``).

    ``rgb_normalized``: channel standardisation with the given statistics (the pretraining data's);
    ``lab_l``: the L channel of CIE Lab scaled to [-1, 1] (``L / 50 - 1``), colorization's input.
    Holds no trainable state; its ``__qualname__`` names kind and statistics, so that the feature
    cache fingerprint (:func:`pretextlab.evaluation.feature_fingerprint`) tells preparations apart.
    """

    def __init__(self, kind: str, mean: list[float] | None = None, std: list[float] | None = None) -> None:
        if kind not in INPUT_KIND_CHANNELS:
            raise ExportError(f"the backbone's input kind {kind!r} is unknown to this pretextlab "
                              f"(it knows {sorted(INPUT_KIND_CHANNELS)})")
        if kind == "rgb_normalized" and (mean is None or std is None or len(mean) != 3 or len(std) != 3):
            raise ExportError(f"input kind rgb_normalized needs 3 mean and 3 std values, got {mean}, {std}")
        self.kind = kind
        self.mean = torch.tensor([float(v) for v in mean], dtype=torch.float32) if mean is not None else None
        self.std = torch.tensor([float(v) for v in std], dtype=torch.float32) if std is not None else None
        self.__qualname__ = f"InputPreparation({kind}, mean={mean}, std={std})"

    @property
    def channels(self) -> int:
        return INPUT_KIND_CHANNELS[self.kind]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from pretextlab.ops.inputs import prepare_input

        return prepare_input(images, self.kind, self.mean, self.std)


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

    @property
    def random_init(self) -> bool:
        return self.info.get("task") == "none"


def _is_export(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".safetensors", ".json")
    return (path / "backbone.safetensors").is_file() or (path / "backbone.json").is_file()


def _run_record(path: Path) -> ResultsRecord:
    """The run's results.json, checked; ExportError when it is not a finished pretraining run's."""
    try:
        record = ResultsRecord.read(path / RESULTS_FILE)
    except ResultsError as error:
        raise ExportError(f"{error}; a run directory's results.json is written by pretextlab.train") from error
    if record.transfer:
        raise ExportError(f"{path} is an evaluation written by pretextlab.evaluate, not a pretraining run; "
                          f"evaluate the run it names ({record.pretrained.get('path')})")
    if not record.ok:
        raise ExportError(f"the run at {path} did not finish (status: {record.status.splitlines()[0]}); "
                          "evaluate a finished run")
    if record.untrained:
        raise ExportError(f"the run at {path} ran 0 pretraining steps, so its {record.task} backbone is random init; "
                          "re-run it with trainer.max_epochs >= 1, or evaluate a task=none run")
    backbone = (record.raw.get("config") or {}).get("backbone")
    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str):
        raise ExportError(f"{path / RESULTS_FILE} has no config.backbone (with a name) to rebuild the backbone from")
    return record


def _run_facts(record: ResultsRecord) -> dict[str, Any]:
    """What the table needs to find the pretraining row of an evaluation (its variant and budget)."""
    config = record.raw.get("config") or {}
    return {"run_config": {"task": config.get("task"),
                           "trainer": {"max_epochs": (config.get("trainer") or {}).get("max_epochs")}},
            "pretrain_images": record.pretrain_images, "epochs": record.epochs}


def load_pretrained(path: str | Path, checkpoint: str | None = None) -> Pretrained:
    """The backbone at ``path`` (a run directory or an export) with its description; ExportError or
    CheckpointError when ``path`` is neither or its files are not what they claim."""
    from pretextlab.export import describe_run_backbone, load_backbone, read_metadata

    path = Path(str(path)).expanduser()
    if not path.exists():
        raise ExportError(f"pretrained path {path} does not exist; give a run directory (written by "
                          "pretextlab.train) or an export (python -m pretextlab.export)")
    path = path.resolve()
    if path.is_dir() and (path / RESULTS_FILE).is_file():
        record = _run_record(path)
        checkpoint_path = Path(checkpoint).expanduser() if checkpoint else path / "checkpoints" / "last.ckpt"
        if record.task == "none" and checkpoint is None and not checkpoint_path.exists():
            return _random_init(path, record)
        if not checkpoint_path.exists():
            from pretextlab.checkpoints import CheckpointError

            raise CheckpointError(f"no checkpoint at {checkpoint_path}: the run at {path} wrote none (did it finish "
                                  "an epoch?); give checkpoint=<file> or evaluate another run")
        ckpt = _read_weights_only(checkpoint_path, path)
        _check_checkpoint_identity(ckpt, record, checkpoint_path, path)
        backbone, _, metadata = describe_run_backbone(path, record.raw, ckpt, checkpoint_path)
        info = _info(metadata, path, "run", record)
        info["run_dir"] = str(path)
        info.update(_run_facts(record))
        return _pretrained(backbone, metadata, info)
    if _is_export(path):
        if checkpoint is not None:
            raise ExportError(f"checkpoint={checkpoint} applies to a run directory, but {path} is an export")
        backbone = load_backbone(path)
        metadata = read_metadata(path)
        info = _info(metadata, path, "export", None)
        info.update(_export_run(path, metadata))
        return _pretrained(backbone, metadata, info)
    raise ExportError(f"{path} is neither a run directory (results.json + checkpoints/last.ckpt, written by "
                      "pretextlab.train) nor an exported backbone (backbone.safetensors + backbone.json, written "
                      "by python -m pretextlab.export)")


def _read_weights_only(checkpoint_path: Path, run_dir: Path) -> dict[str, Any]:
    """The checkpoint, read weights-only with the allow-list (checkpoints.py); never unpickled fully here."""
    from pretextlab.checkpoints import DamagedCheckpointError, UnsafeCheckpointError, read_checkpoint

    try:
        return read_checkpoint(checkpoint_path)
    except DamagedCheckpointError as error:
        raise DamagedCheckpointError(
            f"{error}; give checkpoint=<another checkpoint of this run>, or re-run the pretraining (resume=auto "
            "sets a damaged checkpoint aside and continues from the newest readable one)") from error
    except UnsafeCheckpointError as error:
        # checkpoints.py's way out (trust_checkpoint=true) is train's; evaluate reads exports instead.
        refused = str(error).split("; if you trust its origin")[0]
        raise UnsafeCheckpointError(
            f"{refused}; if you trust its origin, export it with python -m pretextlab.export --trust-checkpoint "
            f"{run_dir} (which unpickles it fully, running any code stored in it) and evaluate an export: "
            f"python -m pretextlab.evaluate {run_dir / 'export'}") from error


def _check_checkpoint_identity(ckpt: dict[str, Any], record: ResultsRecord, checkpoint_path: Path,
                               run_dir: Path) -> None:
    """A checkpoint written by another run (its ``pretextlab_run`` record) is refused: the results
    would carry this run's name over someone else's weights."""
    from pretextlab.checkpoints import RUN_KEY, CheckpointError

    stored = ckpt.get(RUN_KEY)
    if not isinstance(stored, dict):
        return  # written before checkpoints named their run: the weights must still fit (export checks)
    mine = {"task": record.task, "backbone": record.backbone, "data": record.data, "seed": record.seed}
    differing = [f"{key} {stored.get(key)!r} vs {value!r}" for key, value in mine.items()
                 if key in stored and str(stored.get(key)) != str(value)]
    if differing:
        raise CheckpointError(f"{checkpoint_path} was written by another run than the one {run_dir / RESULTS_FILE} "
                              f"describes ({', '.join(differing)}); evaluate the run that wrote it, or give "
                              "checkpoint=<a checkpoint of this run>")


def _export_run(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The run an export was written from, when it sits in ``<run dir>/export`` and that run's record agrees."""
    folder = path.parent if path.is_file() else path
    run_dir = folder.parent
    if folder.name != "export" or not (run_dir / RESULTS_FILE).is_file():
        return {}
    try:
        record = ResultsRecord.read(run_dir / RESULTS_FILE)
    except ResultsError:
        return {}
    same = (record.ok and not record.transfer and record.task == metadata.get("task")
            and record.data == metadata.get("data") and record.seed == metadata.get("seed"))
    return {"run_dir": str(run_dir), **_run_facts(record)} if same else {}


def _info(metadata: dict[str, Any], path: Path, kind: str, record: ResultsRecord | None) -> dict[str, Any]:
    info = {
        "path": str(path),
        "kind": kind,
        "task": record.task if record else metadata.get("task"),
        "backbone": record.backbone if record else (metadata.get("build_config") or {}).get("name"),
        "data": record.data if record else metadata.get("data"),
        "seed": record.seed if record else metadata.get("seed"),
        "run_status": record.status if record else metadata.get("run_status"),
        "checkpoint": metadata.get("checkpoint"),
        "weights": "checkpoint (weights-only)" if kind == "run" else "export (safetensors)",
        "weights_sha256": metadata.get("weights_sha256"),
        "build_config": metadata.get("build_config"),
        "stage": metadata.get("stage"),
    }
    if record is not None:
        info["headline"] = record.raw.get("headline")
    return info


def _pretrained(backbone: Any, metadata: dict[str, Any], info: dict[str, Any]) -> Pretrained:
    source = metadata.get("input") or {}
    size = source.get("image_size")
    return Pretrained(backbone, info, str(source.get("kind") or DEFAULT_INPUT_KIND), source.get("mean"),
                      source.get("std"), int(size) if isinstance(size, (int, float)) else None)


def _random_init(path: Path, record: ResultsRecord) -> Pretrained:
    """The random backbone of a ``task=none`` run: rebuilt as train.py built it (seeded, then built)."""
    import lightning as L
    from safetensors.torch import save

    from pretextlab.backbones import build_backbone

    config = record.raw.get("config") or {}
    build_kwargs = {k: v for k, v in config["backbone"].items() if not k.startswith("_")}
    seed = record.seed if isinstance(record.seed, int) else 0
    # train.py seeds, builds the datamodule (which draws nothing from torch's RNG), then the backbone.
    L.seed_everything(seed, workers=True)
    try:
        backbone = build_backbone(**build_kwargs).eval()
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"cannot rebuild the backbone of {path} from its config.backbone: {first}") from error
    weights = {name: tensor.detach().contiguous() for name, tensor in backbone.state_dict().items()}
    size = ((config.get("data") or {}).get("source") or {}).get("image_size")
    info = {
        "path": str(path), "kind": "run", "task": "none", "backbone": record.backbone, "data": record.data,
        "seed": seed, "run_status": record.status, "checkpoint": None,
        "weights": f"random init, rebuilt from the run's config with seed {seed}",
        "weights_sha256": hashlib.sha256(save(weights)).hexdigest(),
        "build_config": dict(getattr(backbone, "build_config", build_kwargs)), "stage": None,
        "headline": record.raw.get("headline"), "run_dir": str(path), **_run_facts(record),
    }
    return Pretrained(backbone, info, input_kind_of(record.raw), None, None,
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
    """The rules of :mod:`pretextlab.validation` that apply (data.*, eval.*, seed, overwrite), plus this
    entry's own keys; ConfigError listing every problem (first line: the first problem)."""
    from pretextlab.validation import _check_rules, _output_problems, _unknown_keys

    if OmegaConf.is_missing(cfg, "pretrained") or not str(cfg.get("pretrained") or "").strip():
        raise ConfigError("no pretrained backbone given: python -m pretextlab.evaluate <run dir | export dir> "
                          "[overrides] (or pretrained=<path>)")
    # Keys nothing reads: top-level ones evaluate.yaml does not have (+task=...: a training key), and keys
    # of data/eval nodes their classes do not take.
    problems = _unknown_keys(cfg, "evaluate") + _check_rules(cfg)
    size = cfg.get("image_size")
    if not (size == "auto" or (isinstance(size, int) and not isinstance(size, bool) and size >= 8)):
        problems.append(f"image_size={size!r} is not allowed: must be auto (the backbone's own size) or an integer >= 8")
    if cfg.get("device") not in ("auto", "cpu", "cuda"):
        problems.append(f"device={cfg.get('device')!r} is not allowed: must be one of ['auto', 'cpu', 'cuda']")
    checkpoint = cfg.get("checkpoint")
    if checkpoint is not None and not (isinstance(checkpoint, str) and checkpoint.strip()):
        problems.append(f"checkpoint={checkpoint!r} is not allowed: must be null (the run's last.ckpt) or a file path")
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
    rgb = pretrained.input_kind == "rgb_normalized"
    preparation = InputPreparation(pretrained.input_kind, mean if rgb else None, std if rgb else None)
    own = pretrained.image_size
    mismatch = None
    if own is not None and size is not None and own != size:
        mismatch = f"a {own} px backbone evaluated on {size} px images"
    description = {
        "kind": pretrained.input_kind,
        "mean": mean if rgb else None,
        "std": std if rgb else None,
        "statistics_from": statistics_from if rgb else None,
        "image_size": size,
        "pretrained_image_size": own,
        "image_size_chosen_by": chosen_by,
        "mismatch": mismatch,
        "notes": pretrained.notes,
    }
    return preparation, description


def _check_backbone_takes(encoder: Any, channels: int, size: int, name: str, pooling: Any = None) -> None:
    """A forward of two blank images: a backbone that cannot take this size, or a pooling grid larger
    than a stage map at this size, fails here in one line."""
    from pretextlab.backbones.pooling import PoolingError, stage_grids

    try:
        with torch.no_grad():
            outputs = encoder.backbone.stage_outputs(torch.zeros(2, channels, size, size))
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"the pretrained {name} backbone cannot process {size} px images ({first}); "
                          "use image_size=auto (its own size) or another size") from error
    if pooling is None:
        return
    shapes = {stage: tuple(int(v) for v in out.shape[1:]) for stage, out in zip(encoder.backbone.stage_names, outputs)}
    try:
        stage_grids(pooling, shapes)
    except PoolingError as error:
        raise ConfigError(f"{error} (the pretrained {name} backbone at {size} px)") from error


def _multilabel_problems(datamodule: Any, protocols: dict[str, Any]) -> None:
    if not getattr(datamodule.source, "multilabel", False):
        return
    single = [name for name, protocol in protocols.items() if not getattr(protocol, "multilabel", False)]
    if single:
        raise ConfigError(f"data={datamodule.name} is multi-label, but eval protocol(s) {single} take single-label "
                          "data only; use eval=voc07_svm")


def _streamed(cfg: DictConfig) -> bool:
    return cfg.data.source.get("in_memory") is False


def _evaluation_size(cfg: DictConfig, pretrained: Pretrained) -> tuple[int | None, str]:
    """The image size to evaluate at, and why; written into ``cfg.data.source`` (the recorded config)."""
    size_key = "eval_image_size" if _streamed(cfg) else "image_size"  # a streamed split is cut for evaluation
    if cfg.image_size == "auto":
        size, chosen_by = pretrained.image_size, "auto: the backbone's pretraining size"
        if size is None:
            size, chosen_by = cfg.data.source.get(size_key), "the evaluation data's (the backbone names none)"
    else:
        size, chosen_by = int(cfg.image_size), f"asked for: image_size={int(cfg.image_size)}"
    if size is not None and size_key in cfg.data.source:
        with open_dict(cfg):
            cfg.data.source[size_key] = int(size)
    return (int(size) if size is not None else None), chosen_by


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the pretrained backbone named by ``cfg.pretrained``; returns the results dictionary.

    The run directory is locked for the whole job; finished results of the same config (and the
    same weights) are returned (the job is skipped), those of another refused (:mod:`pretextlab.rundir`).
    """
    validate_evaluate_config(cfg)
    started = time.perf_counter()
    pretrained = load_pretrained(str(cfg.pretrained), cfg.get("checkpoint"))

    _, chosen_by = _evaluation_size(cfg, pretrained)
    run_dir = Path(cfg.paths.run_dir)
    config = {**resolved_config(cfg), WEIGHTS_KEY: pretrained.info["weights_sha256"]}
    with open_run_dir(run_dir, config, cfg) as previous:
        if previous is not None:
            log.info("%s already holds finished results for this config: skipping the job", run_dir)
            return previous
        return _run_job(cfg, run_dir, config, pretrained, chosen_by, started)


def _run_job(cfg: DictConfig, run_dir: Path, config: dict[str, Any], pretrained: Pretrained, chosen_by: str,
             started: float) -> dict[str, Any]:
    import lightning as L
    from hydra.utils import instantiate

    from pretextlab.evaluation.runner import evaluate, stage_pooling
    from pretextlab.evaluation.encoder import EvaluationEncoder

    log.info("evaluating %s in %s (pid %d)", pretrained.info["path"], run_dir, os.getpid())
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    protocols = {name: instantiate(p) for name, p in (cfg.eval.protocols or {}).items() if p is not None}
    _multilabel_problems(datamodule, protocols)
    for protocol in protocols.values():
        if hasattr(protocol, "class_names") and protocol.class_names is None:
            names = getattr(datamodule.source, "class_names", None)
            protocol.class_names = list(names) if names is not None and len(names) == datamodule.num_classes else None
    # A streamed split is evaluated at its evaluation crop, an in-memory one at the size it was decoded to.
    size = int(datamodule.source.eval_image_size) if datamodule.streaming else int(datamodule.image_size)
    preparation, input_description = _input_description(pretrained, size, chosen_by, datamodule.mean, datamodule.std)
    backbone = pretrained.backbone
    if int(backbone.in_channels) != preparation.channels:
        raise ExportError(f"the backbone takes {backbone.in_channels}-channel images but its input kind "
                          f"{preparation.kind!r} gives {preparation.channels}")
    encoder = EvaluationEncoder(backbone, preparation)
    pooling = stage_pooling(cfg.eval)
    _check_backbone_takes(encoder, preparation.channels, size, str(pretrained.info["backbone"]), pooling)
    if input_description["mismatch"]:
        log.warning("input size mismatch: %s (%s)", input_description["mismatch"], chosen_by)

    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "kind": TRANSFER_KIND,
        "task": pretrained.info["task"] or "unknown",
        "backbone": pretrained.info["backbone"] or "unknown",
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "pretrained": pretrained.info,
        "input": input_description,
        "options": chosen_options(hydra_choices(run_dir)),
    }
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else str(cfg.device)
    # As train.py: untrained BatchNorm statistics are an identity in eval mode; re-estimate them for random init.
    recalibrate = cfg.eval.get("bn_recalibration", "auto")
    recalibrate = pretrained.random_init if recalibrate == "auto" else bool(recalibrate)
    eval_start = time.perf_counter()
    results["eval"] = evaluate(encoder, datamodule, protocols, cfg.eval.stages, pooling, device, cache_dir=run_dir,
                               recalibrate_bn=recalibrate, bn_images=int(cfg.eval.get("bn_images", 10_000)))
    headline_key = str(cfg.eval.headline)
    results["headline"] = {"metric": headline_key, "value": lookup_metric(results["eval"], headline_key)}
    results["wall_time"] = {"eval": time.perf_counter() - eval_start, "total": time.perf_counter() - started}
    results.update(provenance())
    results["config"] = config
    results["status"] = "ok"
    write_results(run_dir / RESULTS_FILE, redact(results))
    return results


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _one_line(error: BaseException) -> str:
    """The whole message on one line (a ConfigError's "also:" problems joined with "; ")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(error).__name__


def _record_failure(cfg: DictConfig, error: BaseException, multirun: bool) -> None:
    """Leave a results.json saying the job failed (never over a finished one).

    As in train.py: a directory held or refused is never written to, and bad input writes nothing in a
    single run (its output directory keeps only Hydra's log); in a sweep it is recorded, so that the
    table lists the evaluation as failed.
    """

    if isinstance(error, JobNotRunError) or (isinstance(error, BAD_INPUT) and not multirun):
        return
    try:
        path = Path(cfg.paths.run_dir) / RESULTS_FILE
        if path.exists():
            try:
                if json.loads(path.read_text()).get("status") == "ok":
                    return
            except (OSError, ValueError, AttributeError):
                pass
        write_results(path, redact({
            "schema_version": SCHEMA_VERSION,
            "status": f"failed: {_first_line(error)}",
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


def _split_arguments(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(flags with their values, overrides, positional paths)`` of a command line, in order."""
    flags: list[str] = []
    overrides: list[str] = []
    paths: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in _FLAGS_WITH_VALUE and index + 1 < len(argv):
            flags += [word, argv[index + 1]]
            index += 2
            continue
        if word in ("--info", "-i") and index + 1 < len(argv) and argv[index + 1] in _INFO_CHOICES:
            flags += [word, argv[index + 1]]
            index += 2
            continue
        is_override = "=" in word or (word.startswith("~") and not word.startswith("~/"))
        if word.startswith("-"):
            flags.append(word)
        elif is_override:
            overrides.append(word)
        else:
            paths.append(word)
        index += 1
    return flags, overrides, paths


def hydra_arguments(argv: list[str]) -> list[str]:
    """The command line with its positional paths turned into ``pretrained=...`` (several: a sweep, ``-m``).

    Raises ConfigError when no backbone is named at all (and the command is not a Hydra help/info call).
    """
    flags, overrides, paths = _split_arguments(argv)
    out = flags + overrides
    named = any(word.split("=", 1)[0].lstrip("+") == "pretrained" for word in out if "=" in word)
    if paths and named:
        raise ConfigError("give the pretrained backbone either as a path or as pretrained=..., not both")
    if paths:
        out.append("pretrained=" + ",".join(quoted_value(p) for p in paths))
        if len(paths) > 1 and not ({"-m", "--multirun"} & set(out)):
            out.insert(0, "--multirun")
    elif not named and not (_NO_RUN_FLAGS & set(out)):
        raise ConfigError("no pretrained backbone given: python -m pretextlab.evaluate <run dir | export dir> "
                          "[overrides]  (several paths, or -m pretrained=A,B, make a sweep)")
    return out


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode

    from pretextlab.hydra_errors import run_hydra_app

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
            # hydra.utils.instantiate wraps constructor errors (e.g. DataError): report the cause.
            error: BaseException = raised
            while isinstance(error, InstantiationException) and error.__cause__ is not None:
                error = error.__cause__
            _record_failure(cfg, error, multirun)
            if multirun:
                log.error("job failed: %s (the sweep continues)", redact(_first_line(error)))
                log.debug("traceback", exc_info=True)
                return math.nan
            if isinstance(error, USER_ERRORS) and not os.environ.get("PRETEXTLAB_TRACEBACK"):
                print(f"pretextlab: error: {redact(_one_line(error))}", file=sys.stderr)
                sys.exit(2)
            raise
        value = results.get("headline", {}).get("value")
        return float(value) if value is not None else None

    # A misspelt key or option (data.sourse.root=..., data=voc207): Hydra's composition error in one line.
    run_hydra_app(main, hint=False)


def cli(argv: list[str] | None = None) -> None:
    """``python -m pretextlab.evaluate``: positional paths → ``pretrained=``, then Hydra."""
    try:
        arguments = hydra_arguments(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as error:
        print(f"pretextlab: error: {redact(_one_line(error))}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *arguments]
    _hydra_main()


def main() -> None:
    """Console script ``pretextlab-evaluate``."""
    cli()


if __name__ == "__main__":
    main()
