"""What every backbone exposes: pooled features, per-stage features, and their dimensions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretextlab.backbones.pooling import StagePooling, pool_map


class Backbone(nn.Module):
    """A feature extractor organised in stages.

    Subclasses implement :meth:`stage_outputs` (the raw output of every stage: a ``(B, C, h, w)``
    map for convnets, a ``(B, N, D)`` token sequence for transformers) and fill ``stage_names``
    and ``stage_dims``. Everything else (pooling, per-stage features, the headline feature
    dimension) is shared here so that evaluation code never needs to know the architecture.
    """

    stage_names: tuple[str, ...]
    stage_dims: tuple[int, ...]
    in_channels: int
    #: Keyword arguments that rebuild this backbone with :func:`pretextlab.backbones.build_backbone`.
    build_config: dict[str, Any]

    @property
    def feature_dim(self) -> int:
        """Dimension of :meth:`forward`'s output (the pooled last stage)."""
        return self.stage_dims[-1]

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def pool(stage_output: torch.Tensor, pool_size: int = 1) -> torch.Tensor:
        """Global average pool (or pool to a ``pool_size`` grid, flattened) of one stage output."""
        if stage_output.ndim == 4:
            pooled = nn.functional.adaptive_avg_pool2d(stage_output, pool_size)
            return pooled.flatten(1)
        if stage_output.ndim == 3:  # tokens: mean over the sequence
            return stage_output.mean(dim=1)
        raise ValueError(f"cannot pool a stage output of shape {tuple(stage_output.shape)}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stage_outputs(images)[-1])

    def forward_stages(
        self, images: torch.Tensor, stages: list[str] | None = None, pool_size: int | StagePooling = 1
    ) -> dict[str, torch.Tensor]:
        """Pooled features of the named stages (all stages when ``stages`` is None).

        ``pool_size``: one grid for every spatial stage, or a :class:`StagePooling` that picks a grid
        per stage from its map (the layer-wise probe's rule); token stages use :meth:`pool` either way.
        """
        wanted = list(self.stage_names) if stages is None else list(stages)
        unknown = [name for name in wanted if name not in self.stage_names]
        if unknown:
            raise ValueError(
                f"backbone has no stage(s) {unknown}; its stages are {list(self.stage_names)}"
            )
        outputs = dict(zip(self.stage_names, self.stage_outputs(images), strict=True))
        if isinstance(pool_size, StagePooling):
            return {name: self._pool_stage(name, outputs[name], pool_size) for name in wanted}
        return {name: self.pool(outputs[name], pool_size) for name in wanted}

    def _pool_stage(self, name: str, output: torch.Tensor, pooling: StagePooling) -> torch.Tensor:
        if output.ndim != 4:
            return self.pool(output)
        channels, height, width = output.shape[1:]
        return pool_map(output, pooling.grid(name, int(channels), int(height), int(width)))

    def stage_feature_dim(self, stage: str, pool_size: int = 1) -> int:
        index = self.stage_names.index(stage)
        spatial = pool_size * pool_size if self.is_convolutional else 1
        return self.stage_dims[index] * spatial

    @property
    def is_convolutional(self) -> bool:
        return True

    @property
    def min_input_size(self) -> int | None:
        """Smallest side, in px, of a square input that every stage can process.

        timm's ``pretrained_cfg["min_input_size"]`` as one number: a task that feeds the backbone
        tiles or patches (jigsaw, context) is checked against it before training starts, instead of
        failing mid-epoch inside a pooling layer. ``None``: the backbone does not say, and
        :mod:`pretextlab.validation` probes it with shape-only (``meta``) tensors.
        """
        return None

    @property
    def fixed_input_size(self) -> int | None:
        """The only input side the backbone takes (a transformer's fixed patch grid), or None for any size."""
        return None
