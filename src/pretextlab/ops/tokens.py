"""Patch tokens for masked image modelling (MAE, He et al. 2021): patchify, masking, normalisation.

Pure batched tensor functions (torch only). A patch vector lists its pixels row by row and, inside
each pixel, its channels — the ``(p, q, c)`` order of the MAE reference code — so a patch of a
``C``-channel image with patch size ``p`` has ``p * p * C`` values, and the patches of an image are
numbered row-major over the ``(H/p, W/p)`` grid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def _check_divisible(height: int, width: int, patch_size: int) -> None:
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"a {height}x{width} image does not split into {patch_size}x{patch_size} patches; "
            "choose a patch size that divides the image size"
        )


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` images → ``(B, N, p*p*C)`` patch vectors, ``N = (H/p)·(W/p)`` row-major."""
    if images.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    _check_divisible(height, width, patch_size)
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    # (B, C, h, p, w, q) -> (B, h, w, p, q, C): grid position first, then pixels, channels last.
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Exact inverse of :func:`patchify`: ``(B, N, p*p*C)`` → ``(B, C, H, W)``.

    ``grid`` is the ``(rows, cols)`` patch grid; None means a square grid (``N`` must be a square).
    """
    if patches.ndim != 3:
        raise ValueError(f"expected (B, N, p*p*C) patches, got shape {tuple(patches.shape)}")
    batch, count, values = patches.shape
    if values != patch_size * patch_size * channels:
        raise ValueError(
            f"patch vectors have {values} values, but patch_size={patch_size} with {channels} channels "
            f"needs {patch_size * patch_size * channels}"
        )
    if grid is None:
        side = round(count**0.5)
        if side * side != count:
            raise ValueError(f"{count} patches do not form a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    rows, cols = grid
    if rows * cols != count:
        raise ValueError(f"grid {rows}x{cols} holds {rows * cols} patches, got {count}")
    images = patches.reshape(batch, rows, cols, patch_size, patch_size, channels)
    images = images.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, q)
    return images.reshape(batch, channels, rows * patch_size, cols * patch_size)


def num_kept_tokens(num_tokens: int, mask_ratio: float) -> int:
    """How many of ``num_tokens`` stay visible at ``mask_ratio`` (the MAE rounding: floor)."""
    return int(num_tokens * (1.0 - mask_ratio))


class MaskedTokens(NamedTuple):
    """Result of :func:`random_masking`.

    ``kept``: ``(B, K, D)`` visible tokens in random order; ``ids_keep``: ``(B, K)`` their positions
    in the original sequence; ``mask``: ``(B, N)`` float, 1 where a token was removed;
    ``ids_restore``: ``(B, N)`` — gathering ``cat([kept, fillers])`` with it restores the original
    order (``fillers`` being the ``N - K`` masked slots).
    """

    kept: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    ids_keep: torch.Tensor


def random_masking(tokens: torch.Tensor, mask_ratio: float,
                   generator: torch.Generator | None = None) -> MaskedTokens:
    """Keep a random ``1 - mask_ratio`` of the tokens of every sample (its own subset per sample).

    One argsort of uniform noise over the whole batch (no loop over samples): the tokens with the
    smallest noise stay visible, so every sample keeps exactly ``num_kept_tokens(N, mask_ratio)``.
    """
    if tokens.ndim != 3:
        raise ValueError(f"expected (B, N, D) tokens, got shape {tuple(tokens.shape)}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    batch, count, dim = tokens.shape
    keep = num_kept_tokens(count, mask_ratio)
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} leaves no visible token out of {count}; lower it")
    noise = torch.rand(batch, count, device=tokens.device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, count, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to the original token order
    return MaskedTokens(kept=kept, mask=mask, ids_restore=ids_restore, ids_keep=ids_keep)


def restore_order(kept: torch.Tensor, filler: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Put ``(B, K, D)`` kept tokens back in place, ``filler`` (``(D,)`` or ``(1, 1, D)``) elsewhere."""
    batch, keep, dim = kept.shape
    count = ids_restore.shape[1]
    fillers = filler.reshape(1, 1, dim).to(kept.dtype).expand(batch, count - keep, dim)
    shuffled = torch.cat([kept, fillers], dim=1)
    return torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Standardise every patch vector by its own mean and variance (MAE's ``norm_pix_loss`` target).

    Uses the unbiased variance, as the MAE reference code does; ``eps`` keeps flat patches finite.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def denormalize_patches(normalized: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Undo :func:`normalize_patches` with the statistics of ``reference`` patches (for display)."""
    mean = reference.mean(dim=-1, keepdim=True)
    var = reference.var(dim=-1, keepdim=True)
    return normalized * (var + eps).sqrt() + mean


def masked_patch_mse(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the patches where ``mask`` is 1 only (``(B, N, P)``, ``(B, N)``)."""
    per_patch = (predictions - targets).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def mean_prediction_mse(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The error of the best constant guess: every masked patch predicted as the masked patches' mean.

    The mean is taken over all masked patches of the batch, separately for each patch value, so
    the baseline knows the average patch but nothing about any particular image.
    """
    weights = mask.unsqueeze(-1)
    mean_target = (targets * weights).sum(dim=(0, 1)) / mask.sum().clamp_min(1.0)
    return masked_patch_mse(mean_target.expand_as(targets), targets, mask)
