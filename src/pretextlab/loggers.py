"""Logger construction that never hangs: W&B falls back to offline mode without a key or network."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_mode(requested: str = "auto") -> str:
    """``auto`` → ``online`` when an API key is configured, else ``offline``."""
    if requested not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode={requested!r}: choose auto, online, offline or disabled")
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return "offline" if os.environ["WANDB_MODE"] == "dryrun" else os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").exists() and "api.wandb.ai" in (
        Path.home() / ".netrc").read_text(errors="ignore")
    return "online" if has_key else "offline"


def wandb_logger(
    project: str = "pretextlab",
    entity: str | None = None,
    save_dir: str = ".",
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str = "auto",
    name: str | None = None,
    **kwargs: Any,
):
    """A Lightning ``WandbLogger`` whose files live in the run directory."""
    from lightning.pytorch.loggers import WandbLogger

    resolved = wandb_mode(mode)
    if resolved == "offline":
        log.info("W&B runs offline (no API key found): sync later with `wandb sync %s/wandb/offline-run-*`", save_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    # Short init timeout: a slow or absent network must not hang a sweep.
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, entity=entity, save_dir=save_dir, group=group, tags=tags or [],
                       mode=resolved, name=name, **kwargs)
