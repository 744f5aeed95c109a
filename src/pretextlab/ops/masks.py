"""Hole masks for inpainting (context encoder, Pathak et al. 2016), batched.

Every function returns a ``(B, 1, H, W)`` bool tensor, True where pixels are hidden. Three kinds,
as in the paper:

- :func:`central_mask`: one centred square (the paper's 64 px hole in 128 px images, ¼ of the
  area). Features then latch onto the fixed hole boundary and transfer poorly;
- :func:`random_block_mask`: a union of smaller, possibly overlapping squares at random places;
- :func:`random_region_mask`: irregular blobs (the paper deformed PASCAL segmentation shapes; here
  a smooth random field is thresholded, so every mask is a union of soft random blobs).

``fraction`` is the share of the image to hide (default ¼, the paper's "up to ¼"). How closely
each kind meets it is stated in its docstring. :func:`overlap_border` gives the thin ring around
a hole where the paper's decoder also predicts, with ×10 loss weight, to blend the fill in.

Everything is vectorised over the batch (no Python loop over images).
"""

from __future__ import annotations

import math

import torch

MASK_KINDS = ("central", "random_blocks", "random_regions")

# Candidate blocks resolved per float64 matmul in random_block_mask (2^-47 is still exact there).
_BLOCKS_PER_CHUNK = 48


#: What a mask fraction may be, in words: config validation and the inpainting task quote it.
MASK_FRACTION_ALLOWED = "a number in (0, 1), strictly between 0 and 1 (the share of the image hidden; the paper's 0.25)"


def is_mask_fraction(value: object) -> bool:
    """Whether ``value`` can be a share of the image to hide: a number strictly between 0 and 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value < 1.0


def check_mask_fraction(fraction: object, key: str = "fraction") -> None:
    """The one check of a mask fraction; ``key`` names it in the message (``task.mask_fraction``)."""
    if not is_mask_fraction(fraction):
        raise ValueError(f"{key}={fraction!r} is not allowed: must be {MASK_FRACTION_ALLOWED}")


def central_mask(
    batch: int, height: int, width: int, fraction: float = 0.25, device: torch.device | str | None = None
) -> torch.Tensor:
    """A centred square of ``round(sqrt(fraction · H · W))`` pixels per side, the same for every image.

    Coverage differs from ``fraction`` only by rounding the side to whole pixels: exactly ¼ at
    32, 64, 96 and 128 px for the default ¼.
    """
    check_mask_fraction(fraction)
    side = min(height, width, max(1, round(math.sqrt(fraction * height * width))))
    top, left = (height - side) // 2, (width - side) // 2
    mask = torch.zeros(batch, 1, height, width, dtype=torch.bool, device=device)
    mask[:, :, top : top + side, left : left + side] = True
    return mask


def random_block_mask(
    batch: int,
    height: int,
    width: int,
    fraction: float = 0.25,
    block_size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A union of ``block_size``² squares at uniform random places, covering at most ``fraction``.

    Candidate blocks are drawn for every image at once and added in order; each image keeps the
    longest prefix whose union still covers at most ``fraction`` of the image. The next block
    would have pushed it over, so the coverage lies in ``(fraction − block_size²/(H·W), fraction]``
    (unless all candidates together cover less, which the candidate count makes vanishingly rare).
    ``block_size`` defaults to ``max(1, round(min(H, W) / 5))``: 6 px blocks at 32 px.
    """
    check_mask_fraction(fraction)
    if block_size is None:
        block_size = max(1, round(min(height, width) / 5))
    if not 1 <= block_size <= min(height, width):
        raise ValueError(f"block_size={block_size} must lie in 1..{min(height, width)} for {height}x{width} images")
    block_fraction = block_size * block_size / (height * width)
    # Enough candidates that their union practically always passes `fraction` despite overlaps.
    candidates = 4 * math.ceil(fraction / block_fraction) + 4
    top = torch.randint(0, height - block_size + 1, (batch, candidates), device=device, generator=generator)
    left = torch.randint(0, width - block_size + 1, (batch, candidates), device=device, generator=generator)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    in_rows = ((rows >= top[:, None, :]) & (rows < top[:, None, :] + block_size)).double()  # (B, H, K)
    in_cols = ((cols >= left[:, :, None]) & (cols < left[:, :, None] + block_size)).double()  # (B, K, W)
    # first[b, y, x] = index of the first candidate block covering the pixel (``candidates`` if none).
    # Weighting block k by 2^-k, the sum over the blocks covering a pixel lies in [2^-f, 2^(1-f))
    # for the first one f, so its binary exponent is -f: one batched matmul and an integer shift
    # instead of a dense pass per block. A last, always-present term 2^-n stands for "no block".
    # float64 keeps every sum exact for up to 48 blocks per chunk.
    first: torch.Tensor | None = None
    for start in range(0, candidates, _BLOCKS_PER_CHUNK):  # one chunk unless blocks are tiny
        stop = min(candidates, start + _BLOCKS_PER_CHUNK)
        weights = torch.pow(2.0, -torch.arange(stop - start, dtype=torch.float64, device=device))
        weighted = torch.bmm(in_rows[:, :, start:stop] * weights, in_cols[:, start:stop])
        weighted += 2.0 ** -(stop - start)
        # IEEE-754 double: bits 52..62 hold the biased exponent (bias 1023), the sign bit is 0 here.
        local = 1023 - (weighted.view(torch.int64) >> 52)
        if stop < candidates:  # "none in this chunk" must rank after every later chunk's blocks
            local = local + (local == stop - start) * (candidates - stop)
        if start > 0:
            local = local + start
        first = local if first is None else torch.minimum(first, local)
    assert first is not None
    # Pixels first covered by block k, summed over k: the coverage of every prefix at once.
    newly_covered = torch.zeros(batch, candidates + 1, dtype=torch.long, device=device)
    ones = torch.ones((), dtype=torch.long, device=device).expand(batch, height * width)
    newly_covered.scatter_add_(1, first.flatten(1), ones)
    covered = newly_covered[:, :candidates].cumsum(dim=1)  # (B, K), non-decreasing
    budget = math.floor(fraction * height * width + 1e-9)  # hidden pixels allowed (float-rounding safe)
    keep = (covered <= budget).sum(dim=1)  # length of the longest prefix within the budget
    return (first < keep.view(batch, 1, 1)).unsqueeze(1)


def random_region_mask(
    batch: int,
    height: int,
    width: int,
    fraction: float = 0.25,
    smoothness: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Irregular blobs: the top ``fraction`` of a smooth random field, exactly ``round(fraction·H·W)`` pixels.

    White noise on a coarse grid (one value per ``smoothness`` pixels) is upsampled bicubically,
    so its high values form a few rounded, sometimes touching blobs; each image then hides its
    ``round(fraction · H · W)`` highest pixels (a per-image rank, so the coverage is exact).
    Larger ``smoothness`` gives fewer, larger blobs; the default ``max(2, round(min(H, W) / 8))``
    (4 px at 32 px) keeps the blobs' look the same at every image size.
    """
    check_mask_fraction(fraction)
    if smoothness is None:
        smoothness = max(2, round(min(height, width) / 8))
    if smoothness < 1:
        raise ValueError(f"smoothness must be >= 1 pixel, got {smoothness}")
    coarse = (max(2, math.ceil(height / smoothness)), max(2, math.ceil(width / smoothness)))
    noise = torch.randn(batch, 1, *coarse, device=device, generator=generator)
    field = torch.nn.functional.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    hidden = max(1, round(fraction * height * width))
    top = field.flatten(1).topk(hidden, dim=1).indices
    mask = torch.zeros(batch, height * width, dtype=torch.bool, device=device)
    mask.scatter_(1, top, True)
    return mask.view(batch, 1, height, width)


def make_masks(
    kind: str,
    batch: int,
    height: int,
    width: int,
    fraction: float = 0.25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Dispatch on ``kind`` (one of :data:`MASK_KINDS`) with each kind's default shape parameters."""
    if kind == "central":
        return central_mask(batch, height, width, fraction, device=device)
    if kind == "random_blocks":
        return random_block_mask(batch, height, width, fraction, generator=generator, device=device)
    if kind == "random_regions":
        return random_region_mask(batch, height, width, fraction, generator=generator, device=device)
    raise ValueError(f"unknown mask kind {kind!r}; choose one of {list(MASK_KINDS)}")


def overlap_border(mask: torch.Tensor, width: int) -> torch.Tensor:
    """The ring of pixels within ``width`` px (Chebyshev distance) outside the hole ``mask``.

    ``mask`` is ``(B, 1, H, W)`` bool; the result is too, disjoint from ``mask`` and touching it.
    One max-pool dilation for the whole batch.
    """
    if width < 0:
        raise ValueError(f"overlap border width must be >= 0, got {width}")
    if width == 0:
        return torch.zeros_like(mask)
    dilated = torch.nn.functional.max_pool2d(mask.float(), kernel_size=2 * width + 1, stride=1, padding=width)
    return (dilated > 0) & ~mask


def default_border_width(image_size: int) -> int:
    """The paper's 4 px border at 128 px, scaled: ``max(1, round(image_size / 32))`` (1 px at 32 px)."""
    return max(1, round(image_size * 4 / 128))
