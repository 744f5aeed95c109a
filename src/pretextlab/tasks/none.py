"""The lower-bound row: a randomly initialised backbone, evaluated without any pretraining."""

from __future__ import annotations

import torch

from pretextlab.tasks.base import PretextOutput, PretextTask


class RandomInitTask(PretextTask):
    """Nothing to learn: ``train.py`` skips fitting and evaluates the random backbone directly."""

    pretrains = False
    table_label = "random init"
    table_order = 0  # the lower bound opens the table
    # Nothing is pretrained, so there is no pretext metric (pretext_metric stays None).
    reference_imagenet_linear = 11.0
    reference_rotnet_cifar = "RotNet CIFAR-10 random init + conv: 72.50"
    in_default_sweep = True

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        raise RuntimeError("task=none has no pretext step: it is evaluated without pretraining")
