"""Logger construction that never hangs, and what every logger receives besides Lightning's metrics.

W&B falls back to offline mode without a key or without network (files under the run directory,
``wandb sync`` later). Every value that reaches a logger's config goes through secret redaction.

``train.py`` calls, per job: :func:`log_config` (the resolved config, once the loggers exist),
:func:`finish_loggers` (the downstream results, then W&B's run is closed) and, when a job fails,
:func:`abort_open_runs` (so the next job of the same multirun process never writes into it).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from pretextlab.redaction import redact, scrub, scrub_override
from pretextlab.io import atomic_write_text

log = logging.getLogger(__name__)

#: Seconds to wait for W&B's server before falling back to offline mode.
REACHABILITY_TIMEOUT_S = 3.0
_DEFAULT_WANDB_URL = "https://api.wandb.ai"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_reachable(timeout: float = REACHABILITY_TIMEOUT_S) -> bool:
    """Whether W&B's server (``WANDB_BASE_URL`` or api.wandb.ai) accepts a TCP connection within ``timeout``."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or _DEFAULT_WANDB_URL)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(requested: str = "auto") -> str:
    """``auto`` → ``online`` when an API key is configured and W&B's server answers, else ``offline``.

    The server is probed (a TCP connect, at most :data:`REACHABILITY_TIMEOUT_S` s) because a run
    that starts online without network waits for ``wandb.init``'s timeout and then fails the job.
    """
    if requested not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode={requested!r}: choose auto, online, offline or disabled")
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return "offline" if os.environ["WANDB_MODE"] == "dryrun" else os.environ["WANDB_MODE"]
    if not _has_api_key():
        return "offline"
    if not wandb_reachable():
        log.warning("W&B server %s is not reachable: running offline",
                    os.environ.get("WANDB_BASE_URL") or _DEFAULT_WANDB_URL)
        return "offline"
    return "online"


#: W&B loggers built in this process whose runs may still be open (a multirun runs its jobs in one
#: process). Strong references: a failed job's logger is garbage once its exception has passed, but
#: its run stays open in ``wandb.run`` until someone finishes it.
_LIVE_WANDB_LOGGERS: list[Any] = []


def abort_open_runs(exit_code: int = 1) -> None:
    """Finish every W&B run this process's loggers started and nobody closed (a job that failed).

    Lightning's ``WandbLogger`` reuses ``wandb.run`` when one is open, so without this the next job
    of a multirun would log into the failed job's run.
    """
    while _LIVE_WANDB_LOGGERS:
        _finish_wandb(_LIVE_WANDB_LOGGERS[-1], exit_code)


def _finish_wandb(logger: Any, exit_code: int) -> None:
    run = getattr(logger, "_experiment", None)
    if logger in _LIVE_WANDB_LOGGERS:
        _LIVE_WANDB_LOGGERS.remove(logger)
    if run is None or not hasattr(run, "finish"):
        return
    try:
        run.finish(exit_code=exit_code)
        import wandb

        if wandb.run is None:
            # finish() returns before wandb-core has written the run's last records (measured with
            # wandb 0.31 offline: the transaction log was still empty right after it); teardown
            # waits for the service to flush and exit, so the run's files are complete now.
            wandb.teardown()
    except Exception as error:  # closing a run must never turn a finished job into a failed one
        log.warning("could not close the W&B run: %s", error)


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` that never hands W&B a credential.

    Its config is scrubbed (:func:`~pretextlab.redaction.scrub`), and so are the command-line
    arguments W&B records with the run (its ``environment`` record, ``wandb-metadata.json`` once
    synced): a ``+extra.api_token=...`` override reaches W&B as ``+extra.api_token=<redacted>``.

    It keeps the class name ``WandbLogger``: code that dispatches on the name (the image panels of
    :mod:`pretextlab.viz`) treats it as the W&B logger it is.
    """

    @property
    def experiment(self) -> Any:
        if getattr(self, "_experiment", None) is not None:
            return super().experiment
        with _scrubbed_argv():  # W&B reads sys.argv when the run starts (wandb.init)
            return super().experiment

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        plain = params if isinstance(params, Mapping) else vars(params)
        super().log_hyperparams(scrub(dict(plain)))


@contextlib.contextmanager
def _scrubbed_argv() -> Iterator[None]:
    """``sys.argv`` with credential-like overrides and environment credentials redacted, for the block."""
    original = sys.argv
    sys.argv = [original[0], *(scrub_override(arg) for arg in original[1:])] if original else original
    try:
        yield
    finally:
        sys.argv = original


def wandb_logger(
    project: str = "pretextlab",
    entity: str | None = None,
    save_dir: str = ".",
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str = "auto",
    name: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A Lightning ``WandbLogger`` whose files live in ``save_dir`` (the run directory).

    ``group`` is the sweep id (``PRETEXTLAB_SWEEP_ID``, set by multirun.sh), so every job of a sweep
    lands in one W&B group.
    """
    abort_open_runs()  # a run left open by an earlier job of this process failed with that job
    resolved = wandb_mode(mode)
    if resolved == "offline":
        log.info("W&B runs offline: sync later with `wandb sync %s/wandb/offline-run-*`", save_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    # Short init timeout: a slow network must not hang a sweep.
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    # Every field that reaches W&B is scrubbed: notes, tags, name, group, a config passed directly, ...
    logger = WandbLogger(
        project=redact(project), entity=redact(entity), save_dir=save_dir, group=redact(group),
        tags=scrub(list(tags or [])), mode=resolved, name=redact(name), **scrub(dict(kwargs)))
    _LIVE_WANDB_LOGGERS.append(logger)
    return logger


# -- CSV ------------------------------------------------------------------------------------------
class _MetricsWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, made to keep a run's whole history in one ``metrics.csv``.

    Lightning's writer deletes ``metrics.csv`` whenever a new writer opens the folder (so a resumed
    run lost its earlier epochs), and rewrites the file with only the keys this process has logged
    when a new key appears (so the ddp_spawn main process, which logs the downstream results after
    its workers wrote the training rows, failed with "dict contains fields not in fieldnames").
    Here the earlier rows are kept and the header is the union of every key in the file.

    Rows of steps this process logs again are dropped from the file at its first save: training
    logs the same steps in every attempt, so the rows an interrupted attempt wrote after the
    checkpoint it is resumed from (steps >= the first step logged now) are superseded, and a run
    restarted from scratch (first step 0) replaces them all.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._first_save = True

    def _check_log_dir_exists(self) -> None:
        pass  # never delete metrics.csv: its rows are this run's earlier epochs

    def save(self) -> None:
        if not self.metrics:
            return
        path = self.metrics_file_path
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        header: list[str] = []
        rows: list[dict[str, Any]] = []
        rewrite = False
        if self._fs.isfile(path) and (self._first_save or new_keys):
            with self._fs.open(path, "r", newline="") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                header = list(reader.fieldnames or [])
            rewrite = bool(new_keys - set(header))
            if self._first_save:
                first_step = min(_row_step(row) for row in self.metrics)
                kept = [row for row in rows if _row_step(row) < first_step]
                rewrite = rewrite or len(kept) != len(rows)
                rows = kept
        self._first_save = False
        self.metrics_keys = sorted(set(self.metrics_keys) | set(header) | new_keys)
        if rewrite:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows({k: v for k, v in row.items() if k is not None} for row in rows)
            atomic_write_text(path, text.getvalue())
        exists = self._fs.isfile(path)
        with self._fs.open(path, mode="a" if exists else "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
            if not exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []


def _row_step(row: Mapping[str, Any]) -> float:
    try:
        return float(row.get("step"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -math.inf  # a row without a step is never superseded


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives resumes and DDP (:class:`_MetricsWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _MetricsWriter(log_dir=self.log_dir)
        return self._experiment


# -- what train.py sends to every logger ---------------------------------------------------------
def log_config(loggers: Iterable[Any], config: Mapping[str, Any]) -> None:
    """Log the resolved experiment config (scrubbed again here: it may come from anywhere) to every logger."""
    clean = scrub(dict(config))
    for logger in loggers:
        logger.log_hyperparams(clean)


def flat_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a results dict as ``{"eval/linear/top1": ...}``: downstream, headline, wall time.

    Pretext and online-probe metrics are left out: Lightning logged them during training already.
    """
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}/{key}", value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            flat[prefix] = float(node)

    walk("eval", results.get("eval", {}))
    walk("wall_time", results.get("wall_time", {}))
    headline = results.get("headline") or {}
    if isinstance(headline.get("value"), (int, float)):
        flat["headline"] = float(headline["value"])
    return flat


def finish_loggers(loggers: Iterable[Any], results: Mapping[str, Any], step: int | None = None) -> None:
    """Send the downstream results to every logger, then close the W&B run (status from ``results``).

    W&B gets them as run summary values (one number per run, what the project's run table shows);
    other loggers as metrics at ``step``.
    """
    metrics = flat_metrics(results)
    failed = str(results.get("status", "ok")) != "ok"
    for logger in loggers:
        if isinstance(logger, LightningWandbLogger):
            run = getattr(logger, "_experiment", None) or logger.experiment
            run.summary.update({redact(name): value for name, value in metrics.items()})
            _finish_wandb(logger, 1 if failed else 0)
        elif metrics:
            logger.log_metrics(metrics, step=step)
            logger.save()
