"""Image panels, sent to whichever logger is active (W&B, TensorBoard, or PNG files for CSV)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """``(N, C, H, W)`` images in [0, 1] (C = 1 or 3) → one ``(3, H', W')`` grid in [0, 1]."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return torchvision.utils.make_grid(images, nrow=nrow, padding=1, pad_value=1.0)


def stack_rows(*rows: torch.Tensor) -> torch.Tensor:
    """Stack equally sized ``(N, C, H, W)`` rows (e.g. input / output / original) into one grid."""
    # Gray rows become 3-channel so rows of both kinds can be concatenated; image_grid does the rest.
    colour_rows = [row.detach().cpu().expand(-1, 3, -1, -1) for row in rows]
    return image_grid(torch.cat([row.float() for row in colour_rows]), nrow=rows[0].shape[0])


def log_panels(module: L.LightningModule, panels: dict[str, torch.Tensor]) -> None:
    """Send each named grid to the module's loggers; only rank 0 writes."""
    if not panels or module.trainer is None or module.trainer.sanity_checking:
        return
    if module.trainer.global_rank != 0:
        return
    step = module.global_step
    loggers = module.trainer.loggers
    for name, grid in panels.items():
        wrote = False
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"panels/{name}", images=[grid.permute(1, 2, 0).numpy()], step=step)
                wrote = True
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"panels/{name}", grid, global_step=step)
                wrote = True
            elif isinstance(logger, CSVLogger):
                folder = Path(logger.log_dir) / "panels"
                folder.mkdir(parents=True, exist_ok=True)
                torchvision.utils.save_image(grid, folder / f"{name}_epoch{module.current_epoch:03d}.png")
                wrote = True
        if not wrote and loggers:
            log.debug("no image-capable logger for panel %s", name)
