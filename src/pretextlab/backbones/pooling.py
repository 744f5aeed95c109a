"""How a stage map becomes a feature vector for the layer-wise probes: a spatial grid per stage.

The field pools every stage to a comparable few thousand features before a linear probe (VISSL's
per-layer pooling maps, mmselfsup's 9,216 / 8,192-feature heads, Zhang et al.'s ~9k), so that a
wide deep stage does not win only because the others were squeezed to a handful of numbers.

The rule (:func:`grid_for_dim`): a stage with ``C`` channels and an ``h × w`` map is average-pooled
to the **largest g × g grid, g dividing both h and w, with C·g² ≤ target_dim**; if even g = 1 is over
the target, g = 1 (global average). Dividing grids make every pooling window the same size, so the
mean of a stage's grid cells is exactly its global average. A per-stage map (``grids``) overrides
the rule, and a fixed ``size`` pools every stage to one grid (the old ``eval.pool_size``).
Token stages (transformers) are not spatial maps: they keep their backbone's token pooling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class PoolingError(ValueError):
    """A pooling setting a stage cannot honour (a grid larger than its map)."""


def grid_for_dim(channels: int, height: int, width: int, target_dim: int) -> int:
    """The largest g dividing ``height`` and ``width`` with ``channels · g² ≤ target_dim`` (at least 1)."""
    best = 1
    for g in range(1, min(height, width) + 1):
        if height % g == 0 and width % g == 0 and channels * g * g <= target_dim:
            best = g
    return best


@dataclass(frozen=True)
class StagePooling:
    """Per-stage pooling: ``grids[stage]`` if given, else ``size`` if given, else the ``target_dim`` rule."""

    target_dim: int = 2048
    size: int | None = None
    grids: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target_dim < 1:
            raise PoolingError(f"eval.pool_dim must be >= 1, got {self.target_dim}")
        if self.size is not None and self.size < 1:
            raise PoolingError(f"eval.pool_size must be >= 1 or null, got {self.size}")
        bad = {stage: g for stage, g in self.grids.items() if int(g) < 1}
        if bad:
            raise PoolingError(f"eval.pool_grids must map stages to grids >= 1, got {bad}")

    def grid(self, stage: str, channels: int, height: int, width: int) -> int:
        """The grid side for one stage map; a configured grid larger than the map is an error."""
        if stage in self.grids:
            chosen, source = int(self.grids[stage]), f"eval.pool_grids.{stage}={int(self.grids[stage])}"
        elif self.size is not None:
            chosen, source = self.size, f"eval.pool_size={self.size}"
        else:
            return grid_for_dim(channels, height, width, self.target_dim)
        if chosen > min(height, width):
            raise PoolingError(
                f"{source} asks for a {chosen}x{chosen} grid, but stage {stage} is a {height}x{width} map at this "
                f"image size; use a grid <= {min(height, width)} or leave it unset (the eval.pool_dim rule)")
        return chosen

    def describe(self) -> dict[str, object]:
        """What results.json records about the pooling (the rule and any overrides)."""
        return {"target_dim": self.target_dim, "size": self.size, "grids": dict(self.grids)}


def pool_map(stage_output: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool a ``(B, C, h, w)`` map to ``g × g`` and flatten it channel-major: ``(B, C·g²)``."""
    return nn.functional.adaptive_avg_pool2d(stage_output, grid).flatten(1)


def stage_grids(pooling: StagePooling, stage_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """``{stage: grid}`` for the spatial stages among ``stage_shapes`` (``(C, h, w)`` or token shapes)."""
    return {stage: pooling.grid(stage, shape[0], shape[1], shape[2])
            for stage, shape in stage_shapes.items() if len(shape) == 3}


def pooling_problems(backbone: Any, image_size: int, pooling: StagePooling) -> list[str]:
    """Config-time check: every configured grid fits its stage map at ``image_size`` (empty list: fine).

    Runs the backbone on PyTorch's ``meta`` device (shapes only) when it was built there.
    """
    unknown = sorted(set(pooling.grids) - set(getattr(backbone, "stage_names", ())))
    problems = [f"eval.pool_grids names stage(s) {unknown}, but the backbone's stages are "
                f"{list(getattr(backbone, 'stage_names', ()))}"] if unknown else []
    try:
        probe = torch.empty(1, int(getattr(backbone, "in_channels", 3)), image_size, image_size, device="meta")
        with torch.no_grad():
            outputs = getattr(backbone, "stage_outputs")(probe)
    except (RuntimeError, ValueError, AssertionError, NotImplementedError):
        return problems  # the backbone's own check reports a size it cannot process
    shapes = {name: tuple(int(v) for v in out.shape[1:]) for name, out in zip(backbone.stage_names, outputs)}
    try:
        stage_grids(pooling, shapes)
    except PoolingError as error:
        problems.append(str(error))
    return problems
