"""A user's own project for the tests that use pretextlab as a library: a task of their own (a module
and its config, outside pretextlab) in an otherwise empty folder."""

from __future__ import annotations

from pathlib import Path

#: A task of a user's own project: one module ...
TOY_MODULE = '''
from typing import Any

import torch
from torch import nn

from pretextlab.tasks import PretextMetric, PretextOutput, PretextTask
from pretextlab.tasks.base import accuracy


class ToyFlipTask(PretextTask):
    """Was the image mirrored left-right?"""

    chance_accuracy = 0.5
    table_label = "mirror flip"
    table_order = 45  # between jigsaw (40) and rotation (50); undeclared would be 75, after rotation
    pretext_metric = PretextMetric("val_agreement", "flip agreement", True)
    reference_imagenet_linear = 12.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.backbone.feature_dim, 2)

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        inputs = self.backbone_input(images)
        both = torch.cat([inputs, torch.flip(inputs, dims=[-1])])
        targets = torch.cat([torch.zeros(len(images)), torch.ones(len(images))]).long().to(images.device)
        features = self.backbone(both)
        logits = self.head(features)
        acc = accuracy(logits, targets)
        return PretextOutput(loss=nn.functional.cross_entropy(logits, targets),
                             metrics={"acc": acc, "agreement": acc}, clean_features=features[: len(images)])
'''
#: ... and one task config, in the user's own config folder.
TOY_YAML = """\
defaults:
  - _optim
  - _self_
_target_: toy_flip_task.ToyFlipTask
name: toyflip
"""


def write_user_project(project: Path) -> Path:
    """``project/toy_flip_task.py`` and ``project/my_configs/task/toyflip.yaml``; returns ``project``."""
    (project / "my_configs" / "task").mkdir(parents=True)
    (project / "toy_flip_task.py").write_text(TOY_MODULE)
    (project / "my_configs" / "task" / "toyflip.yaml").write_text(TOY_YAML)
    return project
