"""pretextlab: self-supervised learning through pretext tasks, measured by transfer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import torch
    from pretextlab.backbones.base import Backbone


def max_hamming_permutations(n: int, grid: int = 3) -> "torch.Tensor":
    """``(n, grid²)`` int64 permutations chosen greedily for maximal minimum Hamming distance."""
    from pretextlab.ops.permutations import max_hamming_permutations as _select

    return _select(n, grid=grid)


def load_backbone(path: str, **kwargs: Any) -> "Backbone":
    """Rebuild an exported backbone (see ``python -m pretextlab.export``)."""
    from pretextlab.export.format import load_backbone as _load

    return _load(path, **kwargs)


__all__ = ["__version__", "load_backbone", "max_hamming_permutations"]
