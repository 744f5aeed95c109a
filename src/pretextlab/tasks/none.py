"""The lower-bound row: a randomly initialised backbone, evaluated without any pretraining."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pretextlab.task_info import DEFAULT_INPUT_KIND, LAB_L_INPUT_KIND
from pretextlab.tasks.base import PretextOutput, PretextTask


class RandomInitTask(PretextTask):
    """Nothing to learn: ``train.py`` skips fitting and evaluates the random backbone directly.

    With ``task.in_channels=1`` the backbone is built for one channel and fed the scaled L of CIE Lab,
    as colorization's is: the random-init row of that backbone (``pretextlab sweep`` adds it when a
    1-channel task is swept), which colorization's row is compared with.
    """

    pretrains = False
    table_label = "random init"
    table_order = 0  # the lower bound opens the table
    # Nothing is pretrained, so there is no pretext metric (pretext_metric stays None).
    reference_imagenet_linear = 11.0
    reference_rotnet_cifar = "RotNet CIFAR-10 random init + conv: 72.50"
    in_default_sweep = True

    @classmethod
    def input_kind_of(cls, config: Mapping[str, Any]) -> str:
        return LAB_L_INPUT_KIND if config.get("in_channels") == 1 else DEFAULT_INPUT_KIND

    @classmethod
    def task_info(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        info = super().task_info(config)
        if info["input_kind"] == LAB_L_INPUT_KIND:
            info["label"] = f"{cls.table_label}, L channel"
        return info

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        raise RuntimeError("task=none has no pretext step: it is evaluated without pretraining")
