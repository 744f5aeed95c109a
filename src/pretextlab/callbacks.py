"""Lightning callbacks shared by every task."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class ThroughputMonitor(L.Callback):
    """Logs training images per second (per process and global) to the progress bar and loggers.

    Counts the clean images of each batch (not the pretext inputs a task derives from them), so the
    number compares across tasks: "how fast does this task get through the dataset".
    """

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._times: list[float] = []
        self._counts: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._times.append(time.perf_counter() - self._start)
        self._counts.append(int(images.shape[0]))
        self._times, self._counts = self._times[-self.window:], self._counts[-self.window:]
        per_process = sum(self._counts) / max(sum(self._times), 1e-9)
        pl_module.log("throughput/images_per_sec", per_process * trainer.world_size, on_step=True,
                      on_epoch=False, prog_bar=True, logger=True, rank_zero_only=True)
