"""Relative patch location (context prediction, Doersch et al. 2015): batched patch pairs.

A 3×3 layout of square patches separated by a gap is laid over each image at a random offset;
every patch is then jittered independently. The centre patch and one of its 8 neighbours form a
pair, and the label says which neighbour it is::

    0 1 2
    3 · 4        (· = the centre patch)
    5 6 7

The original used 96 px patches, a 48 px gap and up to 7 px of jitter: the gap and the jitter
stop the network from matching low-level edges that continue across the patch border.
:func:`default_patch_layout` scales those numbers to small images.

Chromatic aberration (colour fringes that grow towards the image border) lets a network read
absolute position off the colours; :func:`drop_color_channels`, :func:`project_out_green_magenta`
and ``ops.augment.to_grayscale`` are the three countermeasures of the paper.

Everything here is one gather over the whole batch: no Python loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Number of neighbours of the centre cell, i.e. the number of classes.
NUM_NEIGHBOURS = 8

#: (row, column) of neighbour ``k`` on the 3×3 layout, row-major with the centre (1, 1) left out.
NEIGHBOUR_CELLS: tuple[tuple[int, int], ...] = (
    (0, 0), (0, 1), (0, 2),
    (1, 0), (1, 2),
    (2, 0), (2, 1), (2, 2),
)

# The original layout (Doersch et al. 2015), in pixels.
_ORIGINAL_PATCH, _ORIGINAL_GAP, _ORIGINAL_JITTER = 96, 48, 7
_ORIGINAL_EXTENT = 3 * _ORIGINAL_PATCH + 2 * _ORIGINAL_GAP + 2 * _ORIGINAL_JITTER  # 398 px
_SMALLEST_EXTENT = 3 * 1 + 2 * 3 + 2 * 1  # 1 px patches, the smallest gap that 1 px of jitter allows


@dataclass(frozen=True)
class PatchLayout:
    """Sizes of the 3×3 layout, in pixels.

    ``gap`` is the nominal spacing between neighbouring patches before jitter; each patch then
    moves by up to ``jitter`` pixels along each axis, so two neighbours are always at least
    ``gap - 2 * jitter`` pixels apart (they never touch: :meth:`validate` demands ``gap > 2 * jitter``).
    """

    patch: int
    gap: int
    jitter: int

    @property
    def extent(self) -> int:
        """Side of the smallest square that holds the layout at any jitter."""
        return 3 * self.patch + 2 * self.gap + 2 * self.jitter

    @property
    def step(self) -> int:
        """Distance between the top-left corners of neighbouring cells (before jitter)."""
        return self.patch + self.gap

    def validate(self, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the sizes and the fix when the layout cannot be used."""
        if self.patch < 1 or self.gap < 0 or self.jitter < 0:
            raise ValueError(
                f"patch layout needs patch_size >= 1, gap >= 0 and jitter >= 0, got "
                f"patch_size={self.patch}, gap={self.gap}, jitter={self.jitter}"
            )
        if self.gap <= 2 * self.jitter:
            raise ValueError(
                f"gap={self.gap} must exceed 2 * jitter={2 * self.jitter}, otherwise two jittered "
                f"neighbours can touch and the network can match edges across them; raise gap to "
                f">= {2 * self.jitter + 1} or lower jitter to <= {(self.gap - 1) // 2}"
            )
        if self.extent > min(height, width):
            side = min(height, width)
            hint = (f" (e.g. {default_patch_layout(side)} fits)" if side >= _SMALLEST_EXTENT else "")
            raise ValueError(
                f"the 3x3 patch layout needs {self.extent} px (3 * patch_size {self.patch} + "
                f"2 * gap {self.gap} + 2 * jitter {self.jitter}) but the images are {height}x{width}; "
                f"lower patch_size/gap/jitter{hint} or use larger images"
            )


def default_patch_layout(image_size: int) -> PatchLayout:
    """The original 96/48/7 px layout scaled to ``image_size``, adjusted so that it fits.

    The patch keeps its scaled size where possible; the gap is the scaled gap, shrunk to what is
    left over but never below ``2 * jitter + 1`` (neighbours must not touch); jitter is at least
    1 px. At 32 px this gives patch 8, gap 3, jitter 1 (extent exactly 32); at 96 px 23 / 11 / 2.
    """
    if image_size < _SMALLEST_EXTENT:
        raise ValueError(
            f"context prediction needs images of at least {_SMALLEST_EXTENT} px (three 1 px patches, "
            f"3 px gaps, 1 px jitter), got {image_size}; use larger images"
        )
    scale = image_size / _ORIGINAL_EXTENT
    jitter = max(1, round(_ORIGINAL_JITTER * scale))
    min_gap = 2 * jitter + 1
    patch = max(1, round(_ORIGINAL_PATCH * scale))
    room_for_gap = (image_size - 3 * patch - 2 * jitter) // 2
    gap = max(min_gap, min(round(_ORIGINAL_GAP * scale), room_for_gap))
    if 3 * patch + 2 * gap + 2 * jitter > image_size:  # the patch gives way to the minimum gap
        patch = max(1, (image_size - 2 * gap - 2 * jitter) // 3)
    return PatchLayout(patch=patch, gap=gap, jitter=jitter)


@dataclass
class PatchPairs:
    """A batch of (centre, neighbour) pairs and where they came from.

    ``centre`` and ``neighbour`` are ``(N, C, p, p)``; ``labels`` ``(N,)`` int64 in 0..7;
    ``image_index`` ``(N,)`` the source image of each pair (image-major: the pairs of image 0
    come first); ``centre_yx`` / ``neighbour_yx`` ``(N, 2)`` the top-left pixel of each patch.
    """

    centre: torch.Tensor
    neighbour: torch.Tensor
    labels: torch.Tensor
    image_index: torch.Tensor
    centre_yx: torch.Tensor
    neighbour_yx: torch.Tensor


def neighbour_offsets(layout: PatchLayout, device: torch.device | str | None = None) -> torch.Tensor:
    """``(8, 2)`` int64: top-left of neighbour cell ``k`` relative to the centre cell, before jitter."""
    cells = torch.tensor(NEIGHBOUR_CELLS, dtype=torch.long, device=device)
    return (cells - 1) * layout.step


def crop_patches(images: torch.Tensor, image_index: torch.Tensor, top_left: torch.Tensor, size: int) -> torch.Tensor:
    """Cut ``(N, C, size, size)`` patches at ``top_left`` ``(N, 2)`` out of ``images[image_index]``.

    One advanced-indexing gather over the whole batch (no per-patch loop) from the zero-copy view
    of all ``size``-sized windows (2.5x faster on CPU than indexing rows and columns pixel by
    pixel); the caller guarantees that every patch lies inside the image.
    """
    windows = images.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H', W', size, size), a view
    patches = windows.permute(0, 2, 3, 1, 4, 5)[image_index, top_left[:, 0], top_left[:, 1]]
    return patches.contiguous()


def sample_patch_pairs(
    images: torch.Tensor,
    layout: PatchLayout,
    pairs_per_image: int = 1,
    generator: torch.Generator | None = None,
) -> PatchPairs:
    """Sample ``pairs_per_image`` (centre, neighbour) pairs from every image of ``images``.

    Per pair: the layout is placed at a uniformly random offset where it fits at any jitter, the
    neighbour position is uniform over the 8 cells, and both patches are jittered independently
    and uniformly by ``-jitter..jitter`` pixels along each axis.
    """
    if images.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if pairs_per_image < 1:
        raise ValueError(f"pairs_per_image must be >= 1, got {pairs_per_image}")
    batch, _, height, width = images.shape
    layout.validate(height, width)
    device = images.device
    count = batch * pairs_per_image

    def randint(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape, device=device, generator=generator)

    image_index = torch.arange(batch, device=device).repeat_interleave(pairs_per_image)
    # The layout's top-left corner (jitter margin included) can sit anywhere it still fits.
    span = torch.tensor([height - layout.extent + 1, width - layout.extent + 1], device=device)
    origin = (torch.rand((count, 2), device=device, generator=generator) * span).long()
    centre_cell = origin + layout.jitter + layout.step  # top-left of the un-jittered centre patch
    labels = randint(NUM_NEIGHBOURS, (count,))
    neighbour_cell = centre_cell + neighbour_offsets(layout, device)[labels]
    jitters = randint(2 * layout.jitter + 1, (2, count, 2)) - layout.jitter
    centre_yx = centre_cell + jitters[0]
    neighbour_yx = neighbour_cell + jitters[1]
    return PatchPairs(
        centre=crop_patches(images, image_index, centre_yx, layout.patch),
        neighbour=crop_patches(images, image_index, neighbour_yx, layout.patch),
        labels=labels,
        image_index=image_index,
        centre_yx=centre_yx,
        neighbour_yx=neighbour_yx,
    )


def drop_color_channels(
    patches: torch.Tensor, noise_ratio: float = 0.01, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Colour dropping: keep one random channel per patch, replace the other two with noise.

    As in the paper, the dropped channels become Gaussian noise whose standard deviation is
    ``noise_ratio`` (≈ 1/100) times that of the kept channel. The noise is centred on 0, so pass
    mean-centred (normalised) patches: 0 is then the dataset mean colour.
    """
    if patches.ndim != 4 or patches.shape[1] != 3:
        raise ValueError(f"colour dropping needs (N, 3, h, w) patches, got shape {tuple(patches.shape)}")
    count = patches.shape[0]
    kept = torch.randint(0, 3, (count,), device=patches.device, generator=generator)
    keep_mask = torch.nn.functional.one_hot(kept, 3).bool()[:, :, None, None]  # (N, 3, 1, 1)
    kept_channel = patches[torch.arange(count, device=patches.device), kept]  # (N, h, w)
    kept_std = kept_channel.flatten(1).std(dim=1, correction=0)[:, None, None, None]
    noise = torch.randn(patches.shape, device=patches.device, dtype=patches.dtype, generator=generator)
    return torch.where(keep_mask, patches, noise * (noise_ratio * kept_std))


def project_out_green_magenta(images: torch.Tensor) -> torch.Tensor:
    """Remove the green–magenta colour axis: green and magenta move towards grey.

    The axis is green minus grey, ``(-1, 2, -1) / sqrt(6)`` in RGB; it is orthogonal to the grey
    axis ``(1, 1, 1)`` and the red–blue axis ``(1, 0, -1)``, which both survive unchanged. Values
    may leave [0, 1] slightly (a linear projection); the backbone does not mind.
    """
    if images.shape[-3] != 3:
        raise ValueError(f"the green-magenta projection needs RGB input, got {images.shape[-3]} channels")
    axis = images.new_tensor([-1.0, 2.0, -1.0]) / 6.0**0.5
    component = torch.einsum("...chw,c->...hw", images, axis)
    return images - component.unsqueeze(-3) * axis.view(3, 1, 1)
