"""Checkpoints in and out: written atomically, read weights-only, checked before Lightning resumes from them.

Writing (:class:`AtomicCheckpointIO`, the Trainer's checkpoint plugin): every checkpoint is written to a
temporary file in its own folder, flushed to disk and renamed over its final name, so a crash or a full
disk mid-write leaves the old file or the new one, never half of one. (Lightning's own writer stages the
bytes in the system temp folder and *copies* them over when that is another file system.)

Reading: every checkpoint pretextlab loads, here and inside Lightning, goes through :func:`read_checkpoint`:
``torch.load(weights_only=True)`` with the small allow-list of :func:`safe_globals` (export reads runs
through it too), whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says (an explicit ``weights_only=True`` is the one thing that
variable cannot override). ``trust_checkpoint=true`` is the opt-in to full unpickling.

Resuming (:func:`resume_plan`): ``resume=auto`` takes ``<run dir>/checkpoints/last.ckpt``, or, when that
is damaged (set aside as ``*.unreadable`` with a warning), the newest checkpoint beside it that reads,
or none. ``resume=<file>`` must be a readable checkpoint. Either way the checkpoint must come from this
run's task, backbone and seed (``pretextlab_run``, written into every checkpoint by
:class:`pretextlab.callbacks.RunCheckpoint`), or ``resume_foreign=true`` accepts it and results.json
records what differed; and its weights must fit the task built from the config, so that a foreign
checkpoint is a one-line error instead of Lightning's "Missing key(s)" traceback.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pickle
import re
import typing
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from pretextlab.config import ConfigError
from pretextlab.io import atomic_path

log = logging.getLogger("pretextlab.train")  # the run's narrative, as before these lines moved here

#: Where pretextlab stores the identity of the run that wrote a checkpoint.
RUN_KEY = "pretextlab_run"
#: The identity fields a resumed checkpoint must share with the config (unless ``resume_foreign=true``).
IDENTITY = ("task", "backbone", "seed")
#: Suffix a damaged checkpoint gets when it is set aside.
UNREADABLE_SUFFIX = ".unreadable"
NEVER = (None, False, "never", "none")


class CheckpointError(ConfigError):
    """A checkpoint that cannot or must not be resumed from (one line: what, why, and the way out)."""


class DamagedCheckpointError(CheckpointError):
    """The file is not a complete PyTorch checkpoint: truncated, corrupted, or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds objects beyond tensors and plain values: loading it would run code stored in it.

    ``refused`` is the message without its way out, for callers whose way out is another option
    (``python -m pretextlab.export --trust-checkpoint``).
    """

    def __init__(self, refused: str, way_out: str | None = None) -> None:
        super().__init__(refused if way_out is None else f"{refused}; {way_out}")
        self.refused = refused


def safe_globals() -> list[Any]:
    """The few non-tensor classes a Lightning 2.x checkpoint of a Hydra-built task holds.

    Hydra passes ``mean``/``std`` to the task as omegaconf ``ListConfig``; Lightning stores them in
    ``hyper_parameters``. These classes only rebuild containers of plain values; everything else
    stays refused by the weights-only unpickler.
    """
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.listconfig import ListConfig
    from omegaconf.nodes import AnyNode

    return [ListConfig, AnyNode, Metadata, ContainerMetadata, typing.Any, collections.defaultdict, list, dict, int]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_checkpoint(path: str | Path, trust: bool = False, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint as a dict, read weights-only (``trust=True``: full unpickling).

    Raises :class:`DamagedCheckpointError` for a file that is not a complete PyTorch archive (a
    truncated write, another kind of file) or not a Lightning checkpoint, :class:`UnsafeCheckpointError`
    for one that holds other objects, :class:`CheckpointError` for a folder or a missing file.
    """
    checkpoint = load_weights_only(path, trust, map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DamagedCheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def load_weights_only(path: str | Path, trust: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a local file, weights-only with the allow-list unless ``trust`` (see read_checkpoint)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file"
                              + (f"; did you mean {path / 'checkpoints' / 'last.ckpt'}?"
                                 if (path / "checkpoints" / "last.ckpt").is_file() else ""))
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    # torch.save writes a zip archive; a truncated one has no central directory.
    if not zipfile.is_zipfile(path):
        raise DamagedCheckpointError(f"{path} is not a complete PyTorch checkpoint (truncated, damaged, or "
                                     "another kind of file)")
    try:
        if trust:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        else:
            with torch.serialization.safe_globals(safe_globals()):
                checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if trust:
            raise DamagedCheckpointError(f"{path} cannot be read: {_first_line(error)}") from error
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain values "
            f"({found.group(1) if found else _first_line(error)}), so it was not loaded",
            "if you trust its origin, pass trust_checkpoint=true (this unpickles it fully and runs any code "
            "stored in it)") from error
    except Exception as error:  # a damaged archive member, a bad CRC, an unknown storage type...
        raise DamagedCheckpointError(f"{path} cannot be read: {_first_line(error)}") from error
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin, writing atomically and reading only what is safe.

    ``save_checkpoint``: a temporary file in the destination folder, fsync, rename (see :mod:`pretextlab.io`).
    ``load_checkpoint``: :func:`read_checkpoint` (weights-only with the allow-list unless ``trust``),
    whatever Lightning or the environment asks for.
    """

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = trust

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        if not _is_local_file_protocol(path):
            raise CheckpointError(f"{path}: pretextlab resumes only from local checkpoint files")
        # Also what ddp_spawn hands back from its workers (a bare state dict): not only Lightning checkpoints.
        return load_weights_only(path, trust=self.trust,
                                 map_location=map_location if map_location is not None else (lambda s, _: s))


# -- resume -----------------------------------------------------------------------------------------
@dataclass
class ResumePlan:
    """The checkpoint a run continues from, and what results.json records about it."""

    path: str
    epoch: int | None
    global_step: int | None
    #: Task, backbone and seed of the run that wrote it (None: unknown, an older checkpoint).
    run: dict[str, Any]
    #: ``{"seed": {"checkpoint": 0, "config": 5}}``: identity fields that differ (accepted by resume_foreign).
    foreign: dict[str, dict[str, Any]] = field(default_factory=dict)
    trusted: bool = False
    #: The last epoch's pretext/probe metrics stored in it (a job that died during evaluation).
    metrics: dict[str, float] = field(default_factory=dict)
    #: Name → shape of every tensor of its state_dict (for :meth:`check_fits`).
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    #: How the user asked for it (``resume=auto`` or ``resume='<path>'``), for messages.
    asked: str = "resume=auto"

    def record(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"checkpoint": self.path, "epoch": self.epoch, "global_step": self.global_step,
                                 "run": self.run}
        if self.foreign:
            entry["foreign"] = self.foreign
        if self.trusted:
            entry["trusted"] = True
        return entry

    def check_fits(self, module: torch.nn.Module, task: str, backbone: str) -> None:
        """Refuse (one line) a checkpoint whose weights do not fit ``module``: Lightning would fail
        with its "Missing key(s)" traceback."""
        problems = _structure_problems(self.shapes, module)
        if problems:
            way_out = _way_out(self.asked == "resume=auto")
            raise CheckpointError(f"{self.asked}: {self.path}: its weights do not fit task {task} on "
                                  f"backbone {backbone} ({problems}); {way_out}")


def run_identity(cfg: Any) -> dict[str, Any]:
    """Task, backbone, data and seed of a composed config (what :data:`RUN_KEY` stores)."""
    return {"task": str(cfg.task.name), "backbone": str(cfg.backbone.name), "data": str(cfg.data.name),
            "seed": int(cfg.seed)}


def _recorded_identity(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Who wrote ``checkpoint``: its own record, else (an older checkpoint) its run directory's records."""
    stored = checkpoint.get(RUN_KEY)
    if isinstance(stored, dict):
        return {key: stored.get(key) for key in (*IDENTITY, "data")}
    identity: dict[str, Any] = {key: None for key in (*IDENTITY, "data")}
    hyper = checkpoint.get("hyper_parameters") or {}
    if isinstance(hyper, dict) and isinstance(hyper.get("name"), str):
        identity["task"] = hyper["name"]
    run_dir = path.resolve().parent.parent  # <run dir>/checkpoints/<file>
    config: Any = None
    try:
        config = json.loads((run_dir / "results.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        try:
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
        except Exception:
            config = None
    if isinstance(config, dict):
        for key in ("task", "backbone", "data"):
            node = config.get(key)
            if identity[key] is None and isinstance(node, dict) and isinstance(node.get("name"), str):
                identity[key] = node["name"]
        if isinstance(config.get("seed"), int):
            identity["seed"] = config["seed"]
    return identity


def _structure_problems(stored: dict[str, tuple[int, ...]], module: torch.nn.Module) -> str | None:
    """Why weights of these names and shapes do not fit ``module`` (None: they do)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = [f"{k} {stored[k]} vs {expected[k]}" for k in sorted(set(expected) & set(stored))
                  if stored[k] != expected[k]]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
             f"shape mismatch {few(mismatched)}" if mismatched else ""]
    return "; ".join(p for p in parts if p) or None


def _set_aside(path: Path, reason: str) -> None:
    """Rename a damaged checkpoint (and the ``last.ckpt`` link to it) out of the way, with a warning."""
    target = path.resolve() if path.is_symlink() else path
    aside = target.with_name(target.name + UNREADABLE_SUFFIX)
    if target.exists():
        os.replace(target, aside)
    if path.is_symlink():
        path.unlink()
    log.warning("%s; set it aside as %s", reason, aside)


def _candidates(folder: Path) -> Iterator[Path]:
    """Checkpoints of a run directory, best first: last.ckpt, then the others newest first.

    Lazy: a damaged candidate is set aside before the next one is listed.
    """
    last = folder / "last.ckpt"
    if last.is_symlink() or last.exists():
        yield last
    tried = {os.path.realpath(last)}
    while folder.is_dir():
        others = [p for p in folder.glob("*.ckpt") if not p.name.startswith(".") and p.is_file()
                  and not p.is_symlink() and os.path.realpath(p) not in tried]
        if not others:
            return
        newest = max(others, key=lambda p: p.stat().st_mtime_ns)
        tried.add(os.path.realpath(newest))
        yield newest


def resume_plan(cfg: Any, run_dir: Path, rank_zero: bool = True) -> ResumePlan | None:
    """The checkpoint this run continues from (None: start from scratch), checked; see the module doc.

    Called before anything is built; :meth:`ResumePlan.check_fits` then checks the weights against the
    task built from the config. ``rank_zero``: only global rank 0 sets damaged files aside.
    """
    resume = cfg.get("resume", "auto")
    foreign_ok = _flag(cfg, "resume_foreign")
    trust = _flag(cfg, "trust_checkpoint")
    if resume in NEVER:
        return None
    identity = run_identity(cfg)
    if resume == "auto":
        if cfg.get("overwrite", False):
            return None  # replacing old results: never continue the old run's weights
        for candidate in _candidates(run_dir / "checkpoints"):
            try:
                checkpoint = read_checkpoint(candidate, trust=trust)
            except DamagedCheckpointError as error:
                if rank_zero:
                    _set_aside(candidate, f"cannot resume from {candidate}: {_first_line(error)}")
                continue
            except CheckpointError as error:
                if candidate.is_symlink() and not candidate.exists():  # a dangling last.ckpt link
                    if rank_zero:
                        candidate.unlink()
                    continue
                raise CheckpointError(f"resume=auto: {error}") from error
            plan = _checked(cfg, candidate, checkpoint, identity, foreign_ok, trust, auto=True)
            log.info("resuming from %s", candidate)
            return plan
        return None
    path = Path(str(resume)).expanduser()
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"resume={resume!r}: no such checkpoint; use resume=auto or a path to a .ckpt file")
    try:
        checkpoint = read_checkpoint(path, trust=trust)
    except CheckpointError as error:
        raise type(error)(f"resume={resume!r}: {error}") from error
    plan = _checked(cfg, path, checkpoint, identity, foreign_ok, trust, auto=False)
    log.info("resuming from %s", path)
    return plan


def _flag(cfg: Any, key: str) -> bool:
    value = cfg.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: must be true or false")
    return value


def _way_out(auto: bool) -> str:
    return ("pass resume=never to start afresh (its old checkpoints are removed)" if auto else
            "resume from a checkpoint of this run")


def _checked(cfg: Any, path: Path, checkpoint: dict[str, Any], identity: dict[str, Any], foreign_ok: bool,
             trust: bool, auto: bool) -> ResumePlan:
    asked = "resume=auto" if auto else f"resume={str(cfg.get('resume'))!r}"
    what = f"{asked}: {path}"
    recorded = _recorded_identity(path, checkpoint)
    foreign = {key: {"checkpoint": recorded[key], "config": identity[key]} for key in IDENTITY
               if recorded[key] is not None and recorded[key] != identity[key]}
    unknown = [key for key in IDENTITY if recorded[key] is None]
    way_out = _way_out(auto)
    if foreign and not foreign_ok:
        differs = ", ".join(f"{k} {v['checkpoint']!r} (config: {v['config']!r})" for k, v in foreign.items())
        raise CheckpointError(f"{what} was written by another run: {differs}; {way_out}, or pass "
                              "resume_foreign=true to continue from it anyway (results.json records it)")
    if unknown and not auto and not foreign_ok:
        raise CheckpointError(f"{what} does not say which {', '.join(unknown)} wrote it; pass "
                              "resume_foreign=true to continue from it anyway (results.json records it)")
    if foreign:
        log.warning("%s comes from another run (%s); continuing from it as resume_foreign=true asks", what,
                    ", ".join(f"{k}={v['checkpoint']!r}" for k, v in foreign.items()))
    metrics = checkpoint.get("pretextlab_metrics") or {}
    return ResumePlan(
        path=str(path), epoch=_int(checkpoint.get("epoch")), global_step=_int(checkpoint.get("global_step")),
        run=recorded, foreign=foreign, trusted=trust,
        metrics={str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        shapes={str(k): tuple(v.shape) for k, v in checkpoint["state_dict"].items() if torch.is_tensor(v)},
        asked=asked,
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None
