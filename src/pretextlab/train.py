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
import platform
import subprocess
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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import pretextlab
from pretextlab.backbones.base import Backbone
from pretextlab.config import ConfigError, config_dir, project_root, redact, scrub, validate_config
from pretextlab.evaluation.runner import evaluate
from pretextlab.io import atomic_write_json
from pretextlab.loggers import abort_open_runs, finish_loggers, log_config
from pretextlab.tasks.base import NonFiniteLossError

log = logging.getLogger("pretextlab.train")

RESULTS_FILE = "results.json"


class ExistingResultsError(RuntimeError):
    """The run directory holds finished results of a different config."""


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The experiment's config, resolved, without Hydra's node, paths and run-control keys, scrubbed."""
    # Resolved key by key: Hydra's own node may hold values that only exist inside a Hydra job.
    plain: dict[str, Any] = {}
    for key in cfg.keys():
        if key in ("hydra", "paths", "overwrite", "resume"):
            continue
        value = cfg[key]
        plain[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return scrub(plain)


def _metric_values(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix) and not key.endswith("_step"):
            name = key[len(prefix):].removesuffix("_epoch")
            out[name] = float(value)
    return out


def _existing_results(run_dir: Path, config: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Finished results for the same config, to skip the job; refuse to clobber different ones."""
    path = run_dir / RESULTS_FILE
    if not path.exists() or overwrite:
        return None
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if previous.get("status") != "ok":
        return None  # a failed job is retried
    if previous.get("config") == config:
        return previous
    raise ExistingResultsError(
        f"{path} holds finished results of a different config; pass overwrite=true to replace them "
        "or choose another output directory (hydra.run.dir=...)"
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by a composed config; returns the results dictionary."""
    validate_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    config = resolved_config(cfg)
    previous = _existing_results(run_dir, config, bool(cfg.get("overwrite", False)))
    if previous is not None:
        log.info("%s already holds finished results for this config: skipping the job", run_dir)
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"output directory {run_dir} is not writable; choose another with hydra.run.dir=...")

    started = time.perf_counter()
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
                                     default_root_dir=str(run_dir))

    results: dict[str, Any] = {
        "status": "running",
        "task": cfg.task.name,
        "backbone": cfg.backbone.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "chance_accuracy": task.chance_accuracy,
    }
    pretrain_start = time.perf_counter()
    checkpoint = None
    if task.pretrains and int(cfg.trainer.max_epochs) > 0:
        checkpoint = _resume_checkpoint(cfg, run_dir)
        trainer.fit(task, datamodule=datamodule, ckpt_path=checkpoint)
    pretrain_seconds = time.perf_counter() - pretrain_start
    logged = {k: v.item() if torch.is_tensor(v) else v for k, v in trainer.callback_metrics.items()}
    if checkpoint is not None and not any(key.startswith("pretext/") for key in logged):
        # Resumed from the last epoch's checkpoint (the job died during evaluation): fit had nothing
        # left to run, so the epoch's metrics come from the checkpoint (PretextTask.on_save_checkpoint).
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True).get("pretextlab_metrics", {})
        logged = {**stored, **logged}
    results["pretext"] = _metric_values(logged, "pretext/")
    results["online_probe"] = _metric_values(logged, "probe/")
    results["epochs"] = int(logged.get("progress/epochs", trainer.current_epoch))
    results["steps"] = int(logged.get("progress/steps", trainer.global_step))

    eval_start = time.perf_counter()
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    protocols = {name: instantiate(p) for name, p in (cfg.eval.protocols or {}).items() if p is not None}
    if trainer.is_global_zero or not protocols:
        results["eval"] = evaluate(task.encoder(), datamodule, protocols, cfg.eval.stages, int(cfg.eval.pool_size),
                                   device, cache_dir=run_dir)
    eval_seconds = time.perf_counter() - eval_start
    headline_key = str(cfg.eval.headline)
    results["headline"] = {"metric": headline_key, "value": _lookup(results.get("eval", {}), headline_key)}
    results["wall_time"] = {"pretrain": pretrain_seconds, "eval": eval_seconds,
                            "total": time.perf_counter() - started}
    results.update(_provenance())
    results["config"] = config
    results["status"] = "ok"
    if trainer.is_global_zero:
        atomic_write_json(run_dir / RESULTS_FILE, results)
        finish_loggers(loggers, results, step=trainer.global_step)
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


def _resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    resume = cfg.get("resume", "auto")
    if resume in (None, False, "never", "none"):
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume == "auto":
        if cfg.get("overwrite", False):
            return None  # replacing old results: never continue the old run's weights
        if last.exists():
            log.info("resuming from %s", last)
            return str(last)
        return None
    path = Path(str(resume))
    if not path.exists():
        raise ConfigError(f"resume={resume!r}: no such checkpoint; use resume=auto or a path to a .ckpt file")
    return str(path)


def _lookup(tree: dict[str, Any], dotted: str) -> float | None:
    node: Any = tree
    for part in dotted.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def _provenance() -> dict[str, Any]:
    import hydra as hydra_module
    import torchvision

    return {
        "pretextlab_version": pretextlab.__version__,
        "git_commit": _git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": L.__version__,
            "hydra": hydra_module.__version__,
        },
        "hostname": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _record_failure(cfg: DictConfig, error: BaseException, multirun: bool = False) -> None:
    """Leave a results.json that says the job failed (never over a finished one).

    A directory holding someone else's results is never written to. A config the validator
    rejected writes nothing in a single run (the output directory keeps only Hydra's own files);
    in a sweep it is recorded, so that the table shows the job as a failed row.
    """
    if isinstance(error, ExistingResultsError) or (isinstance(error, ConfigError) and not multirun):
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
        atomic_write_json(path, redact({
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
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ExistingResultsError, ValueError, FileNotFoundError,
                                                NonFiniteLossError)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one job; in a multirun a failing job is recorded and the sweep goes on."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        results = run(cfg)
    except Exception as raised:
        # hydra.utils.instantiate wraps constructor errors (e.g. TaskConfigError): report the cause.
        error: BaseException = raised
        while isinstance(error, InstantiationException) and error.__cause__ is not None:
            error = error.__cause__
        abort_open_runs()  # this job's W&B run is closed as failed, never reused by the next job
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


if __name__ == "__main__":
    main()
