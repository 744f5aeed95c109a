"""The lower-bound row: a randomly initialised backbone, evaluated without any pretraining."""

from __future__ import annotations

import torch

from pretextlab.tasks.base import PretextOutput, PretextTask


class RandomInitTask(PretextTask):
    """Nothing to learn: ``train.py`` skips fitting and evaluates the random backbone directly."""

    pretrains = False

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        raise RuntimeError("task=none has no pretext step: it is evaluated without pretraining")
