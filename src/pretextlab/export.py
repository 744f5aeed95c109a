"""A run directory → a pretrained backbone anyone can load: safetensors weights + a JSON description.

    python -m pretextlab.export outputs/runs/<run> [--stage block3] [--output my/backbone.safetensors]

writes ``backbone.safetensors`` (the backbone's state dict, nothing else) and ``backbone.json``
beside it: how to rebuild the module (``build_config`` for
:func:`pretextlab.backbones.build_backbone`), how inputs must be prepared (the task's input kind
and the normalisation statistics it was trained with), in_channels, feature dim and stage names.
In another project::

    backbone = pretextlab.load_backbone("backbone.safetensors")   # an nn.Module, eval mode
    features = backbone(normalised_images)                         # (B, feature_dim)

Safety: the Lightning checkpoint is read with ``torch.load(weights_only=True)`` — no arbitrary
objects are unpickled — and the exported weights are safetensors, which hold tensors only. Every
output is written atomically. A file that is not what it claims fails with :class:`ExportError`.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import typing
from pathlib import Path
from typing import Any

import torch

from pretextlab.backbones import build_backbone
from pretextlab.backbones.base import Backbone
from pretextlab.config import redact
from pretextlab.io import atomic_write_bytes, atomic_write_json

FORMAT = "pretextlab-backbone"
FORMAT_VERSION = 1
WEIGHTS_NAME = "backbone.safetensors"
BACKBONE_PREFIX = "backbone."
#: How each task's backbone expects its input; tasks not listed take normalised RGB.
INPUT_KINDS = {"colorization": "lab_l"}
DEFAULT_INPUT_KIND = "rgb_normalized"
_REQUIRED_METADATA = ("format", "format_version", "build_config", "weights_sha256", "input", "in_channels",
                      "feature_dim", "stage_names")


class ExportError(ValueError):
    """A run directory or an exported file is missing something or is not what it claims."""


def _checkpoint_safe_globals() -> list[Any]:
    """The few non-tensor classes a Lightning 2.x checkpoint of a Hydra-built task holds.

    Hydra passes ``mean``/``std`` to the task as omegaconf ``ListConfig``; Lightning stores them in
    ``hyper_parameters``. These classes only rebuild containers of plain values; everything else
    stays refused by the weights-only unpickler.
    """
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.listconfig import ListConfig
    from omegaconf.nodes import AnyNode

    return [ListConfig, AnyNode, Metadata, ContainerMetadata, typing.Any, collections.defaultdict, list, dict, int]


def load_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, loaded weights-only (``trust=True``: full unpickling)."""
    if not path.is_file():
        raise ExportError(f"no checkpoint at {path}; did the run finish an epoch? (checkpoints/last.ckpt)")
    try:
        if trust:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_checkpoint_safe_globals()):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "" if trust else (" If it holds other objects and you trust its origin, pass --trust-checkpoint "
                                 "(this unpickles arbitrary code).")
        raise ExportError(f"{path} cannot be read as a weights-only checkpoint: {first}.{hint}") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ExportError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def _plain(value: Any) -> Any:
    """omegaconf containers from a checkpoint → plain lists/dicts (JSON-serialisable)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _read_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise ExportError(f"{run_dir} has no results.json; export needs a run directory written by pretextlab.train")
    try:
        results = json.loads(path.read_text())
        backbone_config = results["config"]["backbone"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ExportError(f"{path} does not hold a run's resolved config (config.backbone): {error}") from error
    if not isinstance(backbone_config, dict) or "name" not in backbone_config:
        raise ExportError(f"{path}: config.backbone has no 'name'")
    return results


def export_backbone(run_dir: str | Path, stage: str | None = None, output: str | Path | None = None,
                    checkpoint: str | Path | None = None, trust_checkpoint: bool = False) -> Path:
    """Write the run's pretrained backbone as safetensors + JSON; returns the weights path.

    ``stage`` keeps the backbone up to that stage: :func:`load_backbone` then returns a module whose
    ``forward`` gives that stage's pooled features. The default output is
    ``<run dir>/export/backbone.safetensors``; the JSON sits beside it with the suffix ``.json``.
    """
    from safetensors.torch import save

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    results = _read_results(run_dir)
    checkpoint_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(checkpoint_path, trust=trust_checkpoint)

    build_kwargs = {k: v for k, v in results["config"]["backbone"].items() if not k.startswith("_")}
    try:
        backbone = build_backbone(**build_kwargs)
    except Exception as error:
        raise ExportError(f"cannot rebuild backbone from results.json config.backbone={build_kwargs}: {error}") from error
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
    _load_strict(backbone, state, f"{checkpoint_path} (keys under '{BACKBONE_PREFIX}')")
    if stage is not None and stage not in backbone.stage_names:
        raise ExportError(f"--stage {stage!r}: the backbone's stages are {list(backbone.stage_names)}")

    hyper = {k: _plain(v) for k, v in (ckpt.get("hyper_parameters") or {}).items()}
    task_name = results.get("task") or hyper.get("name")
    stage_index = backbone.stage_names.index(stage) + 1 if stage else len(backbone.stage_names)
    weights = {name: tensor.detach().contiguous().clone() for name, tensor in backbone.state_dict().items()}
    blob = save(weights, metadata={"format": FORMAT})
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "build_config": dict(backbone.build_config),
        "weights_file": None,  # filled below
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "stage": stage,
        "stage_names": list(backbone.stage_names[:stage_index]),
        "stage_dims": list(backbone.stage_dims[:stage_index]),
        "feature_dim": int(backbone.stage_dims[stage_index - 1]),
        "in_channels": int(backbone.in_channels),
        "input": {
            "kind": INPUT_KINDS.get(str(task_name), DEFAULT_INPUT_KIND),
            "range": "float images in [0, 1], (B, C, H, W), then the kind's preparation",
            "mean": hyper.get("mean"),
            "std": hyper.get("std"),
            "image_size": hyper.get("image_size", results["config"].get("data", {}).get("source", {}).get("image_size")),
        },
        "task": task_name,
        "data": results.get("data"),
        "seed": results.get("seed"),
        "run_status": results.get("status"),
        "checkpoint": {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
        "pretextlab_version": _version(),
    }
    weights_path = Path(output) if output else run_dir / "export" / WEIGHTS_NAME
    if weights_path.suffix != ".safetensors":
        weights_path = weights_path.with_suffix(weights_path.suffix + ".safetensors")
    metadata["weights_file"] = weights_path.name
    atomic_write_bytes(weights_path, blob)
    atomic_write_json(_metadata_path(weights_path), redact(metadata))
    return weights_path


def _version() -> str:
    import pretextlab

    return pretextlab.__version__


def _metadata_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    if not state:
        raise ExportError(f"{what} holds no backbone weights")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        details = "; ".join(part for part in (
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing else "",
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}" if unexpected else "",
            f"shape mismatch {mismatched[:3]}{'...' if len(mismatched) > 3 else ''}" if mismatched else "",
        ) if part)
        raise ExportError(f"{what} does not match the described backbone: {details}")
    module.load_state_dict(state, strict=True)


class StageBackbone(Backbone):
    """A backbone cut at one stage: ``forward`` pools that stage; later stages are not reported.

    The full module is kept (stage internals are backbone-specific), so a forward still computes
    the later stages; only their outputs are dropped.
    """

    def __init__(self, backbone: Backbone, stage: str) -> None:
        super().__init__()
        index = backbone.stage_names.index(stage) + 1
        self.inner = backbone
        self.stage_names = tuple(backbone.stage_names[:index])
        self.stage_dims = tuple(backbone.stage_dims[:index])
        self.in_channels = backbone.in_channels
        self.build_config = dict(backbone.build_config)

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.inner.stage_outputs(images)[: len(self.stage_names)]

    @property
    def is_convolutional(self) -> bool:
        return self.inner.is_convolutional

    def stage_feature_dim(self, stage: str, pool_size: int = 1) -> int:
        return self.inner.stage_feature_dim(stage, pool_size)

    def pool(self, stage_output: torch.Tensor, pool_size: int = 1) -> torch.Tensor:  # type: ignore[override]
        # The wrapped backbone decides how its outputs pool (e.g. a ViT's CLS token).
        return self.inner.pool(stage_output, pool_size)


def _resolve_paths(path: str | Path) -> tuple[Path, Path]:
    """``x.safetensors``, ``x.json`` or a folder holding ``backbone.safetensors`` → (weights, metadata)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path, _metadata_path(path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON description of an exported backbone, checked for the keys loading needs."""
    _, metadata_path = _resolve_paths(path)
    if not metadata_path.is_file():
        raise ExportError(f"no metadata file {metadata_path} beside the weights; export writes both "
                          "(python -m pretextlab.export <run dir>)")
    try:
        metadata = json.loads(metadata_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{metadata_path} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ExportError(f"{metadata_path} is not a pretextlab backbone description (format != {FORMAT!r})")
    missing = [key for key in _REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ExportError(f"{metadata_path} lacks {missing}")
    if int(metadata["format_version"]) > FORMAT_VERSION:
        raise ExportError(f"{metadata_path} has format_version {metadata['format_version']}; this pretextlab "
                          f"reads up to {FORMAT_VERSION} (upgrade pretextlab)")
    if not isinstance(metadata["build_config"], dict) or "name" not in metadata["build_config"]:
        raise ExportError(f"{metadata_path}: build_config must be an object with a 'name'")
    return metadata


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu", verify_checksum: bool = True) -> Backbone:
    """Rebuild an exported backbone (``python -m pretextlab.export``) with its weights, in eval mode.

    ``path`` is the ``.safetensors`` file, its ``.json`` or the folder holding ``backbone.safetensors``.
    Loading reads tensors only (safetensors): nothing is unpickled. The weights must match the
    described backbone exactly (names and shapes) and, by default, the checksum in the JSON.
    A backbone exported with ``--stage`` comes back as a :class:`StageBackbone`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights_path, metadata_path = _resolve_paths(path)
    metadata = read_metadata(metadata_path)
    if not weights_path.is_file():
        raise ExportError(f"no weights file {weights_path} beside {metadata_path}")
    blob = weights_path.read_bytes()
    if verify_checksum and hashlib.sha256(blob).hexdigest() != metadata["weights_sha256"]:
        raise ExportError(f"{weights_path} does not match the checksum in {metadata_path}: the weights were "
                          "replaced or damaged after export")
    try:
        state = load(blob)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ExportError(f"{weights_path} is not a safetensors file: {error}") from error
    try:
        backbone = build_backbone(**metadata["build_config"])
    except Exception as error:
        raise ExportError(f"{metadata_path}: build_config {metadata['build_config']} cannot be built: {error}") from error
    _load_strict(backbone, state, str(weights_path))
    backbone = backbone.to(map_location)
    stage = metadata.get("stage")
    if stage is not None:
        if stage not in backbone.stage_names:
            raise ExportError(f"{metadata_path}: stage {stage!r} is not one of {list(backbone.stage_names)}")
        backbone = StageBackbone(backbone, stage)
    if backbone.feature_dim != int(metadata["feature_dim"]):
        raise ExportError(f"{metadata_path}: feature_dim {metadata['feature_dim']} but the rebuilt backbone "
                          f"gives {backbone.feature_dim}")
    return backbone.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretextlab.export",
        description="Export a run's pretrained backbone as safetensors weights + a JSON description.",
    )
    parser.add_argument("run_dir", help="a run directory written by pretextlab.train (holds results.json)")
    parser.add_argument("--stage", help="cut the backbone at this stage (default: the whole backbone)")
    parser.add_argument("--output", help="weights file to write (default: <run dir>/export/backbone.safetensors)")
    parser.add_argument("--checkpoint", help="checkpoint to read (default: <run dir>/checkpoints/last.ckpt)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle the checkpoint fully (runs code stored in it; only for files you trust)")
    args = parser.parse_args(argv)
    try:
        weights = export_backbone(args.run_dir, stage=args.stage, output=args.output, checkpoint=args.checkpoint,
                                  trust_checkpoint=args.trust_checkpoint)
    except ExportError as error:
        print(f"pretextlab.export: error: {redact(str(error))}", file=sys.stderr)
        return 2
    print(f"wrote {weights} and {_metadata_path(weights)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
