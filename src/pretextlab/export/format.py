"""The exported backbone's format: safetensors weights + a JSON description, written, read and checked.

The description says how to rebuild the module (``build_config`` for
:func:`pretextlab.backbones.build_backbone`), how inputs must be prepared (``input``: the input kind its
task declared, see :mod:`pretextlab.task_info`, and the normalisation statistics), in_channels, feature dim and
stage names, and the weights' SHA-256. :func:`load_backbone` reads tensors only (nothing is
unpickled) and checks every field, and the weights against the description, before building
anything of real size. A file that is not what it claims fails with :class:`ExportError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pretextlab.backbones import available_backbones, build_backbone
from pretextlab.backbones.base import Backbone
from pretextlab.redaction import redact
from pretextlab.export.stage import StageBackbone
from pretextlab.io import atomic_write_bytes, atomic_write_json, read_json

FORMAT = "pretextlab-backbone"
FORMAT_VERSION = 1
WEIGHTS_NAME = "backbone.safetensors"
_REQUIRED_METADATA = ("format", "format_version", "build_config", "weights_sha256", "input", "in_channels",
                      "feature_dim", "stage_names")
#: Bounds on the numbers of a description: wide enough for any real backbone, far below what would
#: make building one a memory or time problem. Sizes are then checked against the weights themselves.
_MAX_INT = 2**31 - 1
_MAX_CHANNELS = 4096
_MAX_TEXT = 256
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: A description may ask for at most this many tensors (parameters + buffers) per tensor the weights hold
#: (plus a few): a skeleton built for a hostile depth stops there instead of building millions of layers.
_TENSORS_PER_WEIGHT = 4
_EXTRA_TENSORS = 64
#: The rebuilt module may take at most this much more memory than its weights (non-persistent buffers
#: such as a ViT's position embedding are not in the weights file).
_MEMORY_SLACK_BYTES = 256 * 2**20


class ExportError(ValueError):
    """A run directory or an exported file is missing something or is not what it claims."""


def description_path(weights_path: Path) -> Path:
    """The description beside a weights file: same name, ``.json``."""
    return weights_path.with_suffix(".json")


def write_export(weights_path: Path, blob: bytes, metadata: dict[str, Any]) -> None:
    """Write the weights and their description (secrets redacted) beside them, each atomically."""
    atomic_write_bytes(weights_path, blob)
    atomic_write_json(description_path(weights_path), redact(metadata))


def _check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``state`` has exactly ``module``'s names and shapes (``module`` may be a ``meta`` skeleton)."""
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


def resolve_paths(path: str | Path) -> tuple[Path, Path]:
    """``x.safetensors``, ``x.json`` or a folder holding ``backbone.safetensors`` → (weights, metadata)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path, description_path(path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON description of an exported backbone, checked for the keys loading needs."""
    _, described = resolve_paths(path)
    if not described.is_file():
        raise ExportError(f"no metadata file {described} beside the weights; export writes both "
                          "(python -m pretextlab.export <run dir>)")
    metadata = read_json(described, ExportError)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ExportError(f"{described} is not a pretextlab backbone description (format != {FORMAT!r})")
    missing = [key for key in _REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ExportError(f"{described} lacks {missing}")
    _check_description(metadata, described)
    return metadata


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_build_value(value: Any) -> bool:
    """A plain value a backbone constructor may take: null, bool, bounded int, finite float, short text,
    or a short list of those."""
    if value is None or isinstance(value, bool):
        return True
    if _is_int(value):
        return abs(value) <= _MAX_INT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= _MAX_TEXT
    if isinstance(value, list):
        return len(value) <= 64 and all(_is_build_value(item) and not isinstance(item, list) for item in value)
    return False


def _check_description(metadata: dict[str, Any], metadata_path: Path) -> None:
    """Every field loading relies on has the right type and a sane range, before anything is built.

    All problems are reported at once, in one :class:`ExportError` line naming the file.
    """
    problems: list[str] = []

    def bad(key: str, value: Any, wanted: str) -> None:
        problems.append(f"{key}={_show(value)} must be {wanted}")

    version = metadata["format_version"]
    if not _is_int(version) or version < 1:
        bad("format_version", version, f"an integer >= 1 (this pretextlab writes {FORMAT_VERSION})")
    elif version > FORMAT_VERSION:
        raise ExportError(f"{metadata_path} has format_version {version}; this pretextlab reads up to "
                          f"{FORMAT_VERSION} (upgrade pretextlab)")

    build = metadata["build_config"]
    if not isinstance(build, dict):
        bad("build_config", build, "an object with a backbone 'name'")
    else:
        name = build.get("name")
        if not isinstance(name, str) or name not in available_backbones():
            bad("build_config.name", name, f"one of {available_backbones()}")
        for key, value in build.items():
            if not isinstance(key, str) or not key.isidentifier():
                bad(f"build_config[{key!r}]", value, "under a keyword-argument name")
            elif key != "name" and not _is_build_value(value):
                bad(f"build_config.{key}", value, f"null, true/false, an integer of at most {_MAX_INT}, a finite "
                                                  "number, a short string, or a short list of those")

    channels = metadata["in_channels"]
    if not _is_int(channels) or not 1 <= channels <= _MAX_CHANNELS:
        bad("in_channels", channels, f"an integer in [1, {_MAX_CHANNELS}]")
    feature_dim = metadata["feature_dim"]
    if not _is_int(feature_dim) or not 1 <= feature_dim <= _MAX_INT:
        bad("feature_dim", feature_dim, "a positive integer")
    names = metadata["stage_names"]
    names_ok = (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
                and len(set(names)) == len(names))
    if not names_ok:
        bad("stage_names", names, "a non-empty list of distinct stage names")
    dims = metadata.get("stage_dims")
    if dims is not None and not (isinstance(dims, list) and all(_is_int(d) and 1 <= d <= _MAX_INT for d in dims)
                                 and (not names_ok or len(dims) == len(names))):
        bad("stage_dims", dims, "a list of positive integers, one per stage")
    stage = metadata.get("stage")
    if stage is not None and not (isinstance(stage, str) and (not names_ok or stage in names)):
        bad("stage", stage, f"null or one of stage_names {names if names_ok else ''}".rstrip())
    checksum = metadata["weights_sha256"]
    if not isinstance(checksum, str) or not _SHA256.match(checksum):
        bad("weights_sha256", checksum, "64 lowercase hex digits (the SHA-256 of the weights file)")
    weights_file = metadata.get("weights_file")
    if weights_file is not None and not isinstance(weights_file, str):
        bad("weights_file", weights_file, "a file name or null")
    smallest = metadata.get("min_input_size")
    if smallest is not None and not (_is_int(smallest) and 1 <= smallest <= _MAX_INT):
        bad("min_input_size", smallest, "a positive integer or null")

    description = metadata["input"]
    if not isinstance(description, dict):
        bad("input", description, "an object (kind, mean, std, image_size)")
    else:
        kind = description.get("kind")
        if kind is not None and not isinstance(kind, str):
            bad("input.kind", kind, "a string")
        for key in ("mean", "std"):
            value = description.get(key)
            if value is not None and not (isinstance(value, list) and 1 <= len(value) <= _MAX_CHANNELS
                                          and all(_is_finite(v) for v in value)
                                          and (key == "mean" or all(v > 0 for v in value))):
                bad(f"input.{key}", value, "null or a list of finite numbers" + (" > 0" if key == "std" else ""))
        size = description.get("image_size")
        if size is not None and not (_is_int(size) and 1 <= size <= _MAX_INT):
            bad("input.image_size", size, "a positive integer or null")
    if problems:
        raise ExportError(f"{metadata_path}: " + "; ".join(problems))


class _TooManyTensors(Exception):
    pass


@contextlib.contextmanager
def _tensor_budget(limit: int) -> Iterator[None]:
    """Abort any module construction in this block once more than ``limit`` parameters and buffers are registered."""
    from torch.nn.modules import module as module_hooks

    count = 0

    def hook(*_: Any) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyTensors(limit)

    handles = [module_hooks.register_module_parameter_registration_hook(hook),
               module_hooks.register_module_buffer_registration_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def build_checked(build_config: dict[str, Any], state: dict[str, torch.Tensor], what: str, described: str) -> Backbone:
    """Build the backbone ``build_config`` describes, only once it is known to match ``state``.

    A skeleton is built first with shape-only (``meta``) tensors, which take no memory, under a
    budget on the number of tensors; its names and shapes must equal those of ``state`` (the
    weights, already in memory) and the real module may not need much more memory than they do.
    Only then is the real backbone built. So a description with a huge width, depth or image size
    fails with :class:`ExportError` without allocating anything.
    """
    if not state:
        raise ExportError(f"{what} holds no backbone weights")
    budget = _TENSORS_PER_WEIGHT * len(state) + _EXTRA_TENSORS
    available_backbones()  # optional backbones are imported here, not under the meta device below
    try:
        with torch.device("meta"), _tensor_budget(budget):
            skeleton = build_backbone(**build_config)
    except _TooManyTensors:
        raise ExportError(f"{described}: {_show(build_config, 200)} describes a backbone of more than {budget} "
                          f"tensors, but {what} holds {len(state)}: the description does not fit the weights") from None
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"{described}: {_show(build_config, 200)} cannot be built: {first}") from error
    _check_state(skeleton, state, what)
    needed = _nbytes(skeleton.parameters()) + _nbytes(skeleton.buffers())
    held = _nbytes(state.values())
    if needed > 2 * held + _MEMORY_SLACK_BYTES:
        raise ExportError(f"{described}: {_show(build_config, 200)} would need {needed / 2**20:.0f} MiB to build, "
                          f"far more than the {held / 2**20:.1f} MiB of weights in {what}")
    try:
        backbone = build_backbone(**build_config)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"{described}: {_show(build_config, 200)} cannot be built: {first}") from error
    backbone.load_state_dict(state, strict=True)
    return backbone


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu", verify_checksum: bool = True) -> Backbone:
    """Rebuild an exported backbone (``python -m pretextlab.export``) with its weights, in eval mode.

    ``path`` is the ``.safetensors`` file, its ``.json`` or the folder holding ``backbone.safetensors``.
    Loading reads tensors only (safetensors): nothing is unpickled. The weights must match the
    described backbone exactly (names and shapes) and, by default, the checksum in the JSON.
    A backbone exported with ``--stage`` comes back as a :class:`StageBackbone`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights_path, metadata_path = resolve_paths(path)
    metadata = read_metadata(metadata_path)
    if not weights_path.is_file():
        raise ExportError(f"no weights file {weights_path} beside {metadata_path}")
    try:
        blob = weights_path.read_bytes()
    except OSError as error:
        raise ExportError(f"{weights_path} cannot be read: {error}") from error
    if verify_checksum and hashlib.sha256(blob).hexdigest() != metadata["weights_sha256"]:
        raise ExportError(f"{weights_path} does not match the checksum in {metadata_path}: the weights were "
                          "replaced or damaged after export")
    try:
        state = load(blob)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ExportError(f"{weights_path} is not a safetensors file: {error}") from error
    backbone = build_checked(metadata["build_config"], state, str(weights_path), f"{metadata_path}: build_config")
    if backbone.in_channels != metadata["in_channels"]:
        raise ExportError(f"{metadata_path}: in_channels {metadata['in_channels']} but the rebuilt backbone "
                          f"takes {backbone.in_channels}")
    if list(backbone.stage_names[: len(metadata["stage_names"])]) != metadata["stage_names"]:
        raise ExportError(f"{metadata_path}: stage_names {metadata['stage_names']} but the rebuilt backbone "
                          f"has {list(backbone.stage_names)}")
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


