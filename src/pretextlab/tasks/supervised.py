"""The upper-bound row: the same backbone trained on the labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import PretextOutput, PretextTask, TaskConfigError, accuracy


class SupervisedTask(PretextTask):
    """Cross-entropy on the class labels (images labelled -1 are ignored)."""

    table_label = "supervised"
    table_order = 80  # the upper bound closes the table
    pretext_metric = PretextMetric("val_acc", "acc", True)
    reference_imagenet_linear = 75.0
    reference_rotnet_cifar = "RotNet CIFAR-10 supervised NIN: 92.80"
    in_default_sweep = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.num_classes < 2:
            raise TaskConfigError("task=supervised needs labelled data with at least 2 classes")
        self.chance_accuracy = 1.0 / self.num_classes
        self.head = nn.Linear(self.backbone.feature_dim, self.num_classes)

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        features = self.backbone(self.backbone_input(images))
        logits = self.head(features)
        labelled = labels >= 0
        if labelled.any():
            loss = nn.functional.cross_entropy(logits[labelled], labels[labelled])
            acc = accuracy(logits[labelled], labels[labelled])
        else:
            loss, acc = logits.sum() * 0.0, logits.new_zeros(())
        return PretextOutput(loss=loss, metrics={"acc": acc}, clean_features=features)
