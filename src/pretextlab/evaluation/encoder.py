"""What evaluation calls "features": a backbone with its pretraining's input preparation in front.

It lives with evaluation, not with the tasks, so that evaluation never imports ``pretextlab.tasks``:
a task builds one (:attr:`pretextlab.tasks.base.PretextTask.encoder`), and so does
``pretextlab.evaluate`` for an exported backbone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pretextlab.backbones.base import Backbone


class EvaluationEncoder(nn.Module):
    """A backbone with the task's input preparation in front: what evaluation calls "features".

    Takes float images in [0, 1]; exposes ``forward`` (pooled last stage), ``forward_stages`` and the
    stage metadata of the backbone, so evaluation code never needs to know the task. ``prepare`` is
    the task's input preparation (a bound method holding no trainable state).
    """

    def __init__(self, backbone: Backbone, prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.backbone = backbone
        self.prepare = prepare

    def with_backbone(self, backbone: Backbone) -> EvaluationEncoder:
        """The same input preparation in front of another backbone (e.g. a copy to fine-tune)."""
        return EvaluationEncoder(backbone, self.prepare)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.backbone.stage_names

    def stage_feature_dim(self, stage: str, pool_size: int = 1) -> int:
        return self.backbone.stage_feature_dim(stage, pool_size)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(images))

    def forward_stages(self, images: torch.Tensor, stages: list[str] | None = None, pool_size: int = 1) -> dict[str, torch.Tensor]:
        return self.backbone.forward_stages(self.prepare(images), stages, pool_size)
