"""[0, 1] RGB images → a backbone's input, by the input kind its task declares (``task_info``)."""

from __future__ import annotations

import torch

from pretextlab.ops.augment import normalize
from pretextlab.ops.lab import lightness_input
from pretextlab.task_info import LAB_L_INPUT_KIND


def prepare_input(images: torch.Tensor, kind: str, mean: torch.Tensor | None = None,
                  std: torch.Tensor | None = None) -> torch.Tensor:
    """``lab_l``: the scaled L of CIE Lab ``(B, 1, H, W)``; any other kind (``rgb_normalized``): channel
    standardisation with ``mean`` / ``std`` (the pretraining data's), which it then needs."""
    if kind == LAB_L_INPUT_KIND:
        return lightness_input(images)
    if mean is None or std is None:
        raise ValueError(f"input kind {kind!r} standardises the channels: it needs mean and std")
    return normalize(images, mean, std)
