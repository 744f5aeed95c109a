"""Lightning callbacks shared by every task."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from pretextlab.io import atomic_path


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


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that never leaves a run without a complete, reachable checkpoint.

    - Each file is written atomically (temporary name, fsync, rename): that is the Trainer's checkpoint
      plugin, :class:`pretextlab.checkpoints.AtomicCheckpointIO`, which ``train.py`` installs.
    - ``save_last: link`` re-points ``last.ckpt`` atomically (a new link under a temporary name renamed
      over the old one); Lightning removes the old link first, so a crash in between left no last.ckpt.
    - The previous checkpoint is removed only once the new one is complete *and* ``last.ckpt`` points
      to it; Lightning removes it before re-linking, so a crash in between left ``last.ckpt`` dangling.
    - Every checkpoint records which run wrote it (``run``: task, backbone, data, seed), so that a
      resume from another run's checkpoint is recognised (:mod:`pretextlab.checkpoints`).
    """

    def __init__(self, *args: Any, run: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run = dict(run or {})
        self._pending_removals: list[str] = []
        self._deferring = False

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, so that a checkpoint written before this subclass restores its state.
        key = super().state_key
        name = type(self).__qualname__
        return "ModelCheckpoint" + key[len(name):] if key.startswith(name) else key

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        from pretextlab.checkpoints import RUN_KEY

        checkpoint[RUN_KEY] = dict(self.run)

    # -- previous checkpoint removed only after last.ckpt points to the new one -------------------------
    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self._deferring:
            self._pending_removals.append(filepath)
        else:
            super()._remove_checkpoint(trainer, filepath)

    @contextlib.contextmanager
    def _removals_last(self, trainer: L.Trainer) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        # Reached only when the saves succeeded: an exception keeps the previous checkpoint.
        pending, self._pending_removals = self._pending_removals, []
        current = {os.path.realpath(p) for p in (self.last_model_path, self.best_model_path,
                                                  self._last_checkpoint_saved) if p}
        for path in pending:
            if os.path.realpath(path) not in current:
                super()._remove_checkpoint(trainer, path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        with self._removals_last(trainer):
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self._removals_last(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self._removals_last(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        with self._removals_last(trainer):
            super().on_exception(trainer, pl_module, exception)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self._removals_last(trainer):
            super().on_train_end(trainer, pl_module)

    # -- last.ckpt re-pointed atomically ---------------------------------------------------------------
    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            folder = os.path.dirname(linkpath) or "."
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            tmp = os.path.join(folder, f".{os.path.basename(linkpath)}.{os.getpid()}.link.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            try:
                os.symlink(os.path.relpath(filepath, folder), tmp)
            except OSError:  # no symbolic links here (e.g. Windows without the privilege): an atomic copy
                with atomic_path(linkpath) as copy:
                    shutil.copyfile(filepath, copy)
            else:
                os.replace(tmp, linkpath)
        trainer.strategy.barrier()
