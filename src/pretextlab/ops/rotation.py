"""Rotation pretext transform (RotNet, Gidaris et al. 2018)."""

from __future__ import annotations

import torch


def rotate_batch_all_four(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every image in all four rotations, stacked rotation-major.

    ``images`` is ``(B, C, H, W)`` with ``H == W``. The result is ``(4B, C, H, W)`` where rows
    ``[k*B:(k+1)*B]`` hold the batch rotated counter-clockwise by ``k * 90`` degrees, and labels
    ``(4B,)`` int64 hold ``k``. Rotation-major order keeps the unrotated batch as the first slice,
    so callers can reuse its features (e.g. for the online probe) without another forward pass.
    """
    if images.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"rotation needs square images so that 90-degree turns keep the shape, got "
            f"{images.shape[-2]}x{images.shape[-1]}; set data.image_size to crop squares"
        )
    # rot90 on the spatial dims of the whole batch: one kernel per angle, no per-image loop.
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)], dim=0)
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels
