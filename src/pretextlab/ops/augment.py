"""Batched image augmentation that runs wherever the batch lives (CPU or GPU)."""

from __future__ import annotations

import torch


#: How :func:`random_crop_with_padding` fills the border: ``constant`` (zeros, the CIFAR
#: convention), ``reflect`` (mirrored content, so the border carries no mark of its own) or
#: ``none`` (no pad-crop at all: the images pass unchanged).
PADDING_MODES = ("constant", "reflect", "none")


def random_crop_with_padding(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None, mode: str = "constant"
) -> torch.Tensor:
    """Pad every image by ``padding`` pixels and cut a random same-size crop.

    ``mode="constant"`` pads with zeros; ``"reflect"`` mirrors the image at its border; ``"none"``
    returns the batch as it is. Tasks that
    cut tiles or patches at known positions need ``reflect``: a zero strip inside a crop marks the
    image border, so a tile or patch that shows it gives away where it was cut. One gather over
    the whole batch; each image gets its own offset.
    """
    if mode not in PADDING_MODES:
        raise ValueError(f"padding mode {mode!r}: choose one of {list(PADDING_MODES)}")
    if padding <= 0 or mode == "none":
        return images
    batch, channels, height, width = images.shape
    if mode == "reflect" and padding >= min(height, width):
        raise ValueError(f"reflect padding of {padding} px needs images larger than {padding} px, got {height}x{width}")
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding), mode=mode)
    offsets_y = torch.randint(0, 2 * padding + 1, (batch,), device=images.device, generator=generator)
    offsets_x = torch.randint(0, 2 * padding + 1, (batch,), device=images.device, generator=generator)
    rows = offsets_y[:, None] + torch.arange(height, device=images.device)[None, :]  # (B, H)
    cols = offsets_x[:, None] + torch.arange(width, device=images.device)[None, :]  # (B, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    # padded[b, :, rows[b, i], cols[b, j]] -> (B, H, W, C) then back to channels-first.
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_horizontal_flip(
    images: torch.Tensor, probability: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror a random subset of the batch left-right (never up-down: that would break 'up')."""
    if probability <= 0:
        return images
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < probability
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Channel-wise standardisation; ``mean``/``std`` are ``(C,)`` tensors on any device."""
    return (images - mean.view(1, -1, 1, 1).to(images)) / std.view(1, -1, 1, 1).to(images)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma replicated over the three channels, keeping the input's shape."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    luma = (images * weights).sum(dim=1, keepdim=True)
    return luma.expand_as(images)
