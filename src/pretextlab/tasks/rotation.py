"""RotNet (Gidaris et al. 2018): predict which of four rotations was applied."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretextlab.ops.rotation import rotate_batch_all_four
from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import PretextOutput, PretextTask, accuracy, mlp_head


class RotationTask(PretextTask):
    """Every image appears in all four rotations in the same batch (as in the paper).

    The unrotated quarter of the batch doubles as the online probe's input, so the probe costs
    no extra forward pass.
    """

    chance_accuracy = 0.25
    table_order = 50
    pretext_metric = PretextMetric("val_acc", "acc", True)
    reference_imagenet_linear = 48.0
    reference_rotnet_cifar = "RotNet CIFAR-10 block2: 89.06 non-linear / 91.16 conv"
    in_default_sweep = True

    def __init__(self, head_hidden: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head = mlp_head(self.backbone.feature_dim, 4, head_hidden)

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        rotated, targets = rotate_batch_all_four(self.backbone_input(images))
        features = self.backbone(rotated)
        logits = self.head(features)
        loss = nn.functional.cross_entropy(logits, targets)
        return PretextOutput(
            loss=loss,
            metrics={"acc": accuracy(logits, targets)},
            clean_features=features[: len(images)],
        )

    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from pretextlab.viz import image_grid

        rotated, _ = rotate_batch_all_four(images)
        return {"rotations": image_grid(rotated, nrow=len(images))}
