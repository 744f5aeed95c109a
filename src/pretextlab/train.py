"""Hydra entry point: compose → validate → instantiate → pretrain → evaluate → results.json.

    python -m pretextlab.train task=rotation backbone=convnet data=synthetic
    python -m pretextlab.train -m task=none,rotation,supervised      # a sweep

Nothing but the other entry point, pretextlab.evaluate (which shares its run bookkeeping), imports
this module: it is the outermost layer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from pretextlab import distributed
from pretextlab.backbones.base import Backbone
from pretextlab.checkpoints import AtomicCheckpointIO, resume_plan
from pretextlab.config import ConfigError
from pretextlab.redaction import redact, scrub
from pretextlab.validation import validate_config
from pretextlab.paths import config_dir
from pretextlab.provenance import provenance
from pretextlab.evaluation.runner import evaluate, stage_pooling
from pretextlab.loggers import abort_open_runs, finish_loggers, log_config
from pretextlab.rundir import (RESULTS_FILE, ExistingResultsError, JobNotRunError, global_rank, hydra_choices,
                               open_run_dir, resolved_config, write_hydra_record)
from pretextlab.hydra_errors import run_hydra_app
from pretextlab.results import SCHEMA_VERSION as RESULTS_SCHEMA_VERSION
from pretextlab.results import chosen_options, lookup_metric, write_results
from pretextlab.tasks.base import NonFiniteLossError

log = logging.getLogger("pretextlab.train")

__all__ = ["ExistingResultsError", "RESULTS_FILE", "main", "resolved_config", "run"]


def _metric_values(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix) and not key.endswith("_step"):
            name = key[len(prefix):].removesuffix("_epoch")
            out[name] = float(value)
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by a composed config; returns the results dictionary.

    The run directory is locked for the whole job; finished results of the same config are returned
    (the job is skipped), those of a different config refused (see :mod:`pretextlab.rundir`).
    """
    validate_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    config = resolved_config(cfg)
    with open_run_dir(run_dir, config, cfg) as previous:
        if previous is not None:
            log.info("%s already holds finished results for this config: skipping the job", run_dir)
            return previous
        return _run_job(cfg, run_dir, config)


def _run_job(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    log.info("running the job in %s (pid %d)", run_dir, os.getpid())
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"output directory {run_dir} is not writable; choose another with hydra.run.dir=...")

    started = time.perf_counter()
    pretrains = bool(getattr(get_class(cfg.task._target_), "pretrains", True)) and int(cfg.trainer.max_epochs) > 0
    # The checkpoint to continue from, checked before anything is built (checkpoints.py).
    plan = resume_plan(cfg, run_dir, rank_zero=global_rank() == 0) if pretrains else None
    L.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    backbone = instantiate(cfg.backbone)
    task = instantiate(
        cfg.task,
        _convert_="all",  # plain lists in hyper-parameters: checkpoints load with weights_only=True
        backbone=backbone,
        num_classes=datamodule.num_classes,
        mean=datamodule.mean,
        std=datamodule.std,
        image_size=datamodule.image_size,
    )
    trainer_options = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_options, dict)
    if trainer_options.pop("compile", False):
        task.backbone = compile_backbone(task.backbone)
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    log_config(loggers, config)
    callbacks = [instantiate(c) for name, c in (cfg.callbacks or {}).items()
                 if c is not None and (cfg.trainer.enable_progress_bar or name != "progress_bar")]
    trainer: L.Trainer = instantiate(trainer_options, logger=loggers or False, callbacks=callbacks,
                                     default_root_dir=str(run_dir),
                                     plugins=[AtomicCheckpointIO(trust=bool(cfg.get("trust_checkpoint", False)))])

    results: dict[str, Any] = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "status": "running",
        "task": cfg.task.name,
        "backbone": cfg.backbone.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "chance_accuracy": task.chance_accuracy,
        "options": chosen_options(hydra_choices(run_dir)),
        "task_info": task.task_info(config["task"]),  # label, order, metric, references, input kind
    }
    if plan is not None:
        plan.check_fits(task, cfg.task.name, cfg.backbone.name)
        results["resumed_from"] = plan.record()
    write_hydra_record(run_dir, cfg)  # the job runs: .hydra/ now describes it (rundir.py)
    pretrain_start = time.perf_counter()
    if pretrains:
        trainer.fit(task, datamodule=datamodule, ckpt_path=plan.path if plan else None)
    pretrain_seconds = time.perf_counter() - pretrain_start
    logged = {k: v.item() if torch.is_tensor(v) else v for k, v in trainer.callback_metrics.items()}
    if plan is not None and not any(key.startswith("pretext/") for key in logged):
        # Resumed from the last epoch's checkpoint (the job died during evaluation): fit had nothing
        # left to run, so the epoch's metrics come from the checkpoint (PretextTask.on_save_checkpoint).
        logged = {**plan.metrics, **logged}
    results["pretext"] = _metric_values(logged, "pretext/")
    results["online_probe"] = _metric_values(logged, "probe/")
    results["epochs"] = int(logged.get("progress/epochs", trainer.current_epoch))
    results["steps"] = int(logged.get("progress/steps", trainer.global_step))
    # num_pretrain capped by the split; None: not held in memory (streamed)
    results["pretrain_images"] = datamodule.pretrain_images if task.pretrains else 0

    eval_start = time.perf_counter()
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    protocols = {name: instantiate(p) for name, p in (cfg.eval.protocols or {}).items() if p is not None}
    if trainer.is_global_zero or not protocols:
        # Random init has untrained BatchNorm statistics (an identity in eval mode): re-estimate them.
        recalibrate = cfg.eval.get("bn_recalibration", "auto")
        recalibrate = not task.pretrains if recalibrate == "auto" else bool(recalibrate)
        results["eval"] = evaluate(task.encoder(), datamodule, protocols, cfg.eval.stages, stage_pooling(cfg.eval),
                                   device, cache_dir=run_dir, recalibrate_bn=recalibrate,
                                   bn_images=int(cfg.eval.get("bn_images", 10_000)))
    eval_seconds = time.perf_counter() - eval_start
    headline_key = str(cfg.eval.headline)
    results["headline"] = {"metric": headline_key, "value": lookup_metric(results.get("eval", {}), headline_key)}
    results["wall_time"] = {"pretrain": pretrain_seconds, "eval": eval_seconds,
                            "total": time.perf_counter() - started}
    results.update(provenance())
    results["config"] = config
    results["status"] = "ok"
    if trainer.is_global_zero:
        distributed.raise_if_another_rank_failed()  # DDP in a multirun: a failure on any rank fails the job
        write_results(run_dir / RESULTS_FILE, results)
        # At the step after the last training batch: the training rows' own step counter (under
        # ddp_spawn the main process's trainer.global_step stays 0; its workers trained).
        finish_loggers(loggers, results, step=results["steps"])
    return results


def compile_backbone(backbone: Backbone) -> Backbone:
    """``torch.compile`` the backbone's stage computation where it works; warn and go on where not."""
    try:
        import torch._dynamo

        # Compilation errors surface at the first call, deep inside training: fall back to eager
        # execution there (with dynamo's warning) instead of failing the run.
        torch._dynamo.config.suppress_errors = True
        # The module itself is not wrapped, so checkpoints and exported weights keep plain keys.
        backbone.stage_outputs = torch.compile(backbone.stage_outputs)  # type: ignore[method-assign]
    except Exception as error:  # compile support varies by platform and torch build
        log.warning("torch.compile is not available here (%s); running the backbone uncompiled", error)
    return backbone


def _record_failure(cfg: DictConfig, error: BaseException, multirun: bool = False) -> None:
    """Leave a results.json that says the job failed (never over a finished one).

    A directory holding someone else's results, or held by another process, is never written to.
    A config the validator rejected writes nothing in a single run (the output directory keeps only
    Hydra's own files); in a sweep it is recorded, so that the table shows the job as a failed row.
    """
    if isinstance(error, JobNotRunError) or (isinstance(error, ConfigError) and not multirun):
        return
    try:
        run_dir = Path(cfg.paths.run_dir)
        path = run_dir / RESULTS_FILE
        if path.exists():
            try:
                if json.loads(path.read_text()).get("status") == "ok":
                    return
            except json.JSONDecodeError:
                pass
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if isinstance(error, NonFiniteLossError):
            first_line = f"non-finite loss: {first_line}"
        write_results(path, redact({
            "status": f"failed: {first_line}",
            "error_type": type(error).__name__,
            "task": cfg.task.get("name"),
            "backbone": cfg.backbone.get("name"),
            "data": cfg.data.get("name"),
            "seed": cfg.get("seed"),
            "config": resolved_config(cfg),
            "traceback": traceback.format_exc(),
        }))
    except Exception:  # the original error matters more than a failure to record it
        log.exception("could not record the failure")


#: Errors whose message is the whole story (bad config, bad data, a diverging loss): one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, JobNotRunError, ValueError, FileNotFoundError,
                                                NonFiniteLossError)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one job; in a multirun a failing job is recorded and the sweep goes on."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    # --- DDP in a multirun (pretextlab.distributed): the processes Lightning starts run the sweep
    # in step with this one; they agree on each job and on how it ends. None outside a multirun.
    job = distributed.start_job(cfg) if multirun else None
    if job is not None and not job.runs_here:
        return None
    # ---
    try:
        results = run(cfg)
        if job is not None:
            job.finish()
    except Exception as raised:
        # hydra.utils.instantiate wraps constructor errors (e.g. TaskConfigError): report the cause.
        error: BaseException = raised
        while isinstance(error, InstantiationException) and error.__cause__ is not None:
            error = error.__cause__
        if job is not None:
            error = job.fail(error)  # ends the job on every rank; the first rank's error
        abort_open_runs()  # this job's W&B run is closed as failed, never reused by the next job
        if job is None or job.records:
            _record_failure(cfg, error, multirun)
        if multirun:
            log.error("job failed: %s (the sweep continues)", redact(str(error).splitlines()[0] if str(error) else
                                                                     type(error).__name__))
            log.debug("traceback", exc_info=True)
            return math.nan
        if isinstance(error, USER_ERRORS) and not os.environ.get("PRETEXTLAB_TRACEBACK"):
            print(f"pretextlab: error: {redact(str(error))}", file=sys.stderr)
            print("(set PRETEXTLAB_TRACEBACK=1 to see the traceback)", file=sys.stderr)
            sys.exit(2)
        raise
    value = results.get("headline", {}).get("value")
    return float(value) if value is not None else None


def cli() -> None:
    """The ``pretextlab-train`` command: ``main`` with Hydra's composition errors as one line (exit 2)."""
    run_hydra_app(main)


if __name__ == "__main__":
    cli()
