"""A backbone cut at one stage: what ``python -m pretextlab.export --stage`` exports and loads back."""

from __future__ import annotations

import torch

from pretextlab.backbones.base import Backbone


class StageBackbone(Backbone):
    """A backbone cut at one stage: ``forward`` pools that stage; later stages are not reported.

    The full module is kept (stage internals are backbone-specific), so a forward still computes
    the later stages; only their outputs are dropped.
    """

    def __init__(self, backbone: Backbone, stage: str) -> None:
        super().__init__()
        index = backbone.stage_names.index(stage) + 1
        self.inner = backbone
        self.stage_names = tuple(backbone.stage_names[:index])
        self.stage_dims = tuple(backbone.stage_dims[:index])
        self.in_channels = backbone.in_channels
        self.build_config = dict(backbone.build_config)

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.inner.stage_outputs(images)[: len(self.stage_names)]

    @property
    def is_convolutional(self) -> bool:
        return self.inner.is_convolutional

    @property
    def min_input_size(self) -> int | None:
        return self.inner.min_input_size

    @property
    def fixed_input_size(self) -> int | None:
        return self.inner.fixed_input_size

    def stage_feature_dim(self, stage: str, pool_size: int = 1) -> int:
        return self.inner.stage_feature_dim(stage, pool_size)

    def pool(self, stage_output: torch.Tensor, pool_size: int = 1) -> torch.Tensor:  # type: ignore[override]
        # The wrapped backbone decides how its outputs pool (e.g. a ViT's CLS token).
        return self.inner.pool(stage_output, pool_size)
