"""Config-time helpers: the project-root resolver and validation of composed configs.

Validation runs right after composition, before anything is built or written, and every error
names the key, the value and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

SUPPORTED_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "64-true")


class ConfigError(ValueError):
    """A composed config holds a value pretextlab cannot run with."""


def project_root() -> Path:
    """The folder holding ``conf/`` and ``pyproject.toml`` (``PRETEXTLAB_ROOT`` overrides it)."""
    env = os.environ.get("PRETEXTLAB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "conf" / "train.yaml").exists() and (parent / "pyproject.toml").exists():
            return parent
    return Path.cwd().resolve()


def config_dir() -> Path:
    return project_root() / "conf"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))


register_resolvers()


def _require(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def validate_config(cfg: DictConfig) -> None:
    """Check values that composition alone cannot catch; raise :class:`ConfigError` on the first."""
    data = cfg.data
    _require(int(data.batch_size) >= 1, "data.batch_size", data.batch_size, "must be a positive integer")
    _require(int(data.eval_batch_size) >= 1, "data.eval_batch_size", data.eval_batch_size, "must be a positive integer")
    _require(int(data.source.image_size) >= 8, "data.source.image_size", data.source.image_size, "must be >= 8 pixels")
    _require(data.num_pretrain is None or int(data.num_pretrain) >= 1, "data.num_pretrain", data.num_pretrain,
             "must be a positive integer or null (all images)")
    optimizer = cfg.task.get("optimizer")
    if optimizer is not None and "lr" in optimizer:
        _require(float(optimizer.lr) > 0, "task.optimizer.lr", optimizer.lr, "must be > 0")
    if "probe_lr" in cfg.task:
        _require(float(cfg.task.probe_lr) > 0, "task.probe_lr", cfg.task.probe_lr, "must be > 0")
    trainer = cfg.trainer
    _require(str(trainer.precision) in SUPPORTED_PRECISIONS, "trainer.precision", trainer.precision,
             f"choose one of {list(SUPPORTED_PRECISIONS)}")
    _require(int(trainer.max_epochs) >= 0, "trainer.max_epochs", trainer.max_epochs, "must be >= 0")
    _require(int(cfg.eval.pool_size) >= 1, "eval.pool_size", cfg.eval.pool_size, "must be >= 1")
