"""A run directory → its pretrained backbone, described and written in the export format.

``pretextlab.evaluate`` evaluates a run directory through :func:`describe_run_backbone` as well, so a
run and its export carry the same description and weights checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pretextlab.backbones.base import Backbone
from pretextlab.export.format import FORMAT, FORMAT_VERSION, WEIGHTS_NAME, ExportError, build_checked, write_export
from pretextlab.results import RESULTS_FILE, ResultsError, ResultsRecord
from pretextlab.task_info import input_kind_of

#: Where a task keeps its backbone in its state dict.
BACKBONE_PREFIX = "backbone."


def _plain(value: Any) -> Any:
    """omegaconf containers from a checkpoint → plain lists/dicts (JSON-serialisable)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _read_results(run_dir: Path) -> dict[str, Any]:
    """The run's results.json, read and checked by :class:`~pretextlab.results.ResultsRecord` like every
    reader does, and holding the resolved backbone config export rebuilds the backbone from."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise ExportError(f"{run_dir} has no results.json; export needs a run directory written by pretextlab.train")
    try:
        results = ResultsRecord.read(path).to_dict()
    except ResultsError as error:
        raise ExportError(str(error)) from error
    backbone_config = (results.get("config") or {}).get("backbone")
    if not isinstance(backbone_config, dict):
        raise ExportError(f"{path} does not hold a run's resolved config (config.backbone)")
    if "name" not in backbone_config:
        raise ExportError(f"{path}: config.backbone has no 'name'")
    return results


def read_run_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """The run's Lightning checkpoint, read weights-only by :func:`pretextlab.checkpoints.read_checkpoint`
    (``trust=True``: full unpickling); every refusal as :class:`ExportError`, its way out export's flag."""
    # Imported here: checkpoints.py pulls in Lightning, which loading an export never needs.
    from pretextlab.checkpoints import CheckpointError, UnsafeCheckpointError, read_checkpoint

    if not path.exists():
        raise ExportError(f"no checkpoint at {path}; did the run finish an epoch? (checkpoints/last.ckpt)")
    try:
        return read_checkpoint(path, trust=trust)
    except UnsafeCheckpointError as error:
        raise ExportError(f"{error.refused}; if you trust its origin, pass --trust-checkpoint (this unpickles it "
                          "fully and runs any code stored in it)") from error
    except CheckpointError as error:
        raise ExportError(str(error)) from error


def export_backbone(run_dir: str | Path, stage: str | None = None, output: str | Path | None = None,
                    checkpoint: str | Path | None = None, trust_checkpoint: bool = False) -> Path:
    """Write the run's pretrained backbone as safetensors + JSON; returns the weights path.

    ``stage`` keeps the backbone up to that stage: :func:`load_backbone` then returns a module whose
    ``forward`` gives that stage's pooled features. The default output is
    ``<run dir>/export/backbone.safetensors``; the JSON sits beside it with the suffix ``.json``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    results = _read_results(run_dir)
    checkpoint_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    ckpt = read_run_checkpoint(checkpoint_path, trust=trust_checkpoint)
    _, blob, metadata = describe_run_backbone(run_dir, results, ckpt, checkpoint_path, stage)
    weights_path = Path(output) if output else run_dir / "export" / WEIGHTS_NAME
    if weights_path.suffix != ".safetensors":
        weights_path = weights_path.with_suffix(weights_path.suffix + ".safetensors")
    metadata["weights_file"] = weights_path.name
    write_export(weights_path, blob, metadata)
    return weights_path


def describe_run_backbone(run_dir: Path, results: dict[str, Any], ckpt: dict[str, Any], checkpoint_path: Path,
                          stage: str | None = None) -> tuple[Backbone, bytes, dict[str, Any]]:
    """A run's backbone rebuilt from an already-read checkpoint: ``(backbone, safetensors bytes, description)``.

    What :func:`export_backbone` writes, kept in memory (``pretextlab.evaluate`` evaluates a run this
    way, so a run and its export carry the same description and weights checksum). The backbone is
    whole, in eval mode; ``stage`` only shapes the description and the weights (as export cuts them).
    ``weights_file`` is left None: the caller names the file, if it writes one.
    """
    from safetensors.torch import save

    build_kwargs = {k: v for k, v in results["config"]["backbone"].items() if not k.startswith("_")}
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in ckpt["state_dict"].items()
             if isinstance(k, str) and k.startswith(BACKBONE_PREFIX) and torch.is_tensor(v)}
    backbone = build_checked(build_kwargs, state, f"{checkpoint_path} (keys under '{BACKBONE_PREFIX}')",
                              f"{run_dir / 'results.json'} config.backbone")
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
        "weights_file": None,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "stage": stage,
        "stage_names": list(backbone.stage_names[:stage_index]),
        "stage_dims": list(backbone.stage_dims[:stage_index]),
        "feature_dim": int(backbone.stage_dims[stage_index - 1]),
        "in_channels": int(backbone.in_channels),
        "min_input_size": backbone.min_input_size,
        "input": {
            "kind": input_kind_of(results),  # what the run's task declared (results.json task_info)
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
    return backbone.eval(), blob, metadata


def _version() -> str:
    import pretextlab

    return pretextlab.__version__
