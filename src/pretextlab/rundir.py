"""A job's run directory: who may write it, what a re-run does with what it holds, what Hydra records there.

One job, one directory. :func:`open_run_dir` is the only way in, and it goes in this order:

1. **Lock**: an exclusive ``flock`` on ``<run dir>/.pretextlab.lock`` (pid, host and start time written
   inside, for the message another process gets). A second process, e.g. a second sweep started into
   the same sweep directory, gets :class:`JobHeldError` and writes nothing. The kernel drops the lock
   when its holder dies, however it dies, so a killed job never leaves a stale lock behind; the file
   is removed when the job ends.
2. **Decide**: finished results of the same config → skip (return them); of a different config →
   :class:`ExistingResultsError`, nothing touched; ``overwrite=true`` or ``resume=never`` → every
   output of the old run is removed first (results.json first, so the directory never claims results
   it no longer holds), so checkpoints, metrics, caches and panels all belong to the new run.
3. **Record**: only now is ``.hydra/`` (config.yaml, hydra.yaml, overrides.yaml) written.
   ``conf/train.yaml`` sets ``hydra.output_subdir: null`` because Hydra writes it *before* the task
   function runs, so a refused or skipped job would otherwise rewrite the record beside results it
   did not produce. Writing it here, after the decision, keeps it describing the results beside it.

A job that is refused or held is remembered (:func:`not_run`); :class:`SweepOutcome`, a Hydra callback
(``hydra.callbacks`` in ``conf/train.yaml``), ends a multirun that had any with one line naming them
and exit status 2 (jobs of a local multirun share one process; a SLURM sweep's jobs report each their own).

Only the process of global rank 0 locks, removes or records; other ranks (DDP's extra processes) read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pretextlab.redaction import scrub
from pretextlab.io import atomic_write_text

log = logging.getLogger("pretextlab.train")

RESULTS_FILE = "results.json"
LOCK_FILE = ".pretextlab.lock"
HYDRA_RECORD = ".hydra"
#: Top-level config keys that steer this invocation rather than describe the experiment: left out of
#: the config that results.json records and that a re-run is compared with.
RUN_CONTROL_KEYS = ("hydra", "paths", "overwrite", "resume", "resume_foreign", "trust_checkpoint")
#: What a run writes into its directory (beside Hydra's job log, which stays: it is open for writing,
#: and it is the directory's history). overwrite=true removes these, results.json first.
RUN_OUTPUTS = (RESULTS_FILE, "checkpoints", "eval_cache", "csv", "tensorboard", "wandb", "lightning_logs",
               "export", HYDRA_RECORD)
NEVER = (None, False, "never", "none")


class JobNotRunError(RuntimeError):
    """The job was not run because its directory is not this process's to write; nothing was written."""


class ExistingResultsError(JobNotRunError):
    """The run directory holds finished results of a different config."""


class JobHeldError(JobNotRunError):
    """Another process (e.g. a second sweep into the same directory) is running this job now."""


@dataclass(frozen=True)
class NotRun:
    job: str
    reason: str  # "refused" | "held"
    detail: str


_NOT_RUN: list[NotRun] = []


def not_run() -> list[NotRun]:
    """Jobs of this process that were refused or held, in order."""
    return list(_NOT_RUN)


def _remember(run_dir: Path, reason: str, detail: str) -> None:
    _NOT_RUN.append(NotRun(run_dir.name, reason, detail))


def global_rank() -> int:
    from lightning.fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0


# -- 1. the lock --------------------------------------------------------------------------------------
class JobLock:
    """An exclusive, non-blocking lock on one run directory (see the module doc)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(fd)
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                detail = f"{self.run_dir} is being run by another process{holder}"
                _remember(self.run_dir, "held", detail)
                raise JobHeldError(f"{detail}; run the command again once it has finished "
                                   "(finished jobs are skipped)") from None
            # The file may have been removed by the previous holder between our open and our lock:
            # then we locked an orphan; start over with the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # still holding the lock: whoever opened the old file re-checks the path
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


# -- 2. the decision ----------------------------------------------------------------------------------
def _read_results(run_dir: Path) -> dict[str, Any] | None:
    try:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def _resume_path_inside(resume: Any, run_dir: Path) -> Path | None:
    """The explicit resume checkpoint when it lies among the outputs a fresh start removes."""
    if resume in NEVER or resume == "auto":
        return None
    path = Path(str(resume)).expanduser().absolute()
    for name in RUN_OUTPUTS:
        output = (run_dir / name).absolute()
        if path == output or output in path.parents:
            return path
    return None


def clear_outputs(run_dir: Path, why: str) -> list[str]:
    """Remove what an earlier run wrote into ``run_dir`` (results.json first); returns what was removed."""
    removed = []
    for name in RUN_OUTPUTS:  # results.json first: the directory stops claiming finished results at once
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name + ("/" if name != RESULTS_FILE else ""))
    if removed:
        log.warning("%s: removed the earlier run's %s from %s", why, ", ".join(removed), run_dir)
    return removed


def decide(run_dir: Path, config: dict[str, Any], cfg: DictConfig, rank_zero: bool = True) -> dict[str, Any] | None:
    """Finished results to skip with, or None to run (after clearing what a fresh start replaces)."""
    overwrite = bool(cfg.get("overwrite", False))
    resume = cfg.get("resume", "auto")
    previous = _read_results(run_dir)
    finished = previous is not None and previous.get("status") == "ok"
    if finished and not overwrite:
        assert previous is not None
        if previous.get("config") == config:
            return previous
        path = run_dir / RESULTS_FILE
        _remember(run_dir, "refused", f"{path} holds finished results of a different config")
        raise ExistingResultsError(
            f"{path} holds finished results of a different config; pass overwrite=true to replace them "
            "or choose another output directory (hydra.run.dir=...)")
    fresh = overwrite or resume in NEVER
    if fresh and rank_zero:
        inside = _resume_path_inside(resume, run_dir)
        if inside is not None:
            from pretextlab.config import ConfigError

            raise ConfigError(f"resume={str(resume)!r} lies among the outputs that overwrite=true removes from "
                              f"{run_dir}; copy it elsewhere first")
        clear_outputs(run_dir, "overwrite=true" if overwrite else "resume=never")
    return None


# -- 3. the record ------------------------------------------------------------------------------------
def _this_jobs_hydra(run_dir: Path) -> Any | None:
    """Hydra's node of the job writing ``run_dir``; None outside a Hydra app, or for a Hydra state an
    earlier app left in this process (its output dir is another directory)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_node: Any = HydraConfig.get()
    output_dir = OmegaConf.select(hydra_node, "runtime.output_dir", default=None)
    if output_dir is None or Path(output_dir).resolve() != run_dir.resolve():
        return None
    return hydra_node


def hydra_choices(run_dir: Path) -> dict[str, Any] | None:
    """The config option Hydra chose in each group for the job writing ``run_dir`` (None outside Hydra)."""
    hydra_node = _this_jobs_hydra(run_dir)
    if hydra_node is None:
        return None
    choices = OmegaConf.to_container(hydra_node.runtime.choices, resolve=False)
    return {str(key): value for key, value in choices.items()} if isinstance(choices, dict) else None


def write_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, now that the job runs (see module doc)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_node = _this_jobs_hydra(run_dir)
    if hydra_node is None or global_rank() != 0:
        return  # outside a Hydra app (tests, notebooks), a stale Hydra state, or DDP's extra processes
    if hydra_node.get("output_subdir") is not None:
        return  # the user asked Hydra for its own subdir: Hydra wrote it before the job
    hydra_root = HydraConfig.instance().cfg
    folder = run_dir / HYDRA_RECORD
    task_cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(task_cfg))
    atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_root))
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_node.overrides.task))
    # Hydra records the command line as typed: credential-like overrides are redacted before anyone reads it.
    from pretextlab.hydra_callbacks import scrub_hydra_files

    scrub_hydra_files(folder)


@contextlib.contextmanager
def open_run_dir(run_dir: Path, config: dict[str, Any], cfg: DictConfig) -> Iterator[dict[str, Any] | None]:
    """Lock, decide, record (module doc); yields finished results to skip with, or None to run the job.

    The lock is held until the block ends: the whole job, training, evaluation and results.json.
    """
    rank_zero = global_rank() == 0
    lock = JobLock(run_dir) if rank_zero else None
    if lock is not None:
        lock.acquire()
    try:
        previous = decide(run_dir, config, cfg, rank_zero)
        if previous is None and rank_zero:
            write_hydra_record(run_dir, cfg)
        yield previous
    finally:
        if lock is not None:
            lock.release()


# -- the sweep's verdict ------------------------------------------------------------------------------
def summary_line(entries: list[NotRun]) -> str:
    """One line: how many jobs were not run, which, and why."""
    refused = [e.job for e in entries if e.reason == "refused"]
    held = [e for e in entries if e.reason == "held"]
    parts = []
    if refused:
        parts.append(f"{', '.join(refused)} {'holds' if len(refused) == 1 else 'hold'} finished results of a "
                     "different config (pass overwrite=true to replace them, or choose another hydra.sweep.dir)")
    if held:
        parts.append(f"{', '.join(e.job for e in held)} {'is' if len(held) == 1 else 'are'} being run by another "
                     "process (run the command again once it has finished)")
    count = len(entries)
    return f"{count} job{'s' if count != 1 else ''} of this sweep {'were' if count != 1 else 'was'} not run: " + \
        "; ".join(parts)


class SweepOutcome(Callback):
    """Hydra callback: a multirun with refused or held jobs ends with one line and exit status 2."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _NOT_RUN.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        entries = not_run()
        if not entries:
            return
        print(f"pretextlab: error: {summary_line(entries)}", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(2)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The experiment's config, resolved, without Hydra's node, paths and run-control keys, scrubbed."""
    # Resolved key by key: Hydra's own node may hold values that only exist inside a Hydra job.
    plain: dict[str, Any] = {}
    for key in cfg.keys():
        if key in RUN_CONTROL_KEYS:
            continue
        value = cfg[key]
        plain[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return scrub(plain)
