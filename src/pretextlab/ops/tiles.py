"""Batched jigsaw tiles (Noroozi & Favaro 2016): cut, shuffle, and guard against shortcuts.

Layout: the largest centred square that a ``grid``×``grid`` layout of square cells of
``cell = min(H, W) // grid`` pixels covers; the few leftover border pixels are not used. In each
cell a square tile of ``tile = round_half_up(cell · tile_ratio)`` pixels is cut at a random offset
(one per image and tile), so neighbouring tiles are separated by a random gap and edge continuity
is no shortcut (the original: 64 px tiles in 75 px cells, ratio 0.853).

Shortcut countermeasures, each optional:

- per-tile normalisation by the tile's own mean and standard deviation (per colour channel, as
  the original code's per-tile ``Normalize`` does, or one mean/std over all channels), hiding
  absolute brightness, contrast and colour cast;
- a random fraction of images turned grayscale before cutting (original: 30 %);
- chromatic-aberration jitter: each colour channel of a tile is cut ``0 .. jitter_px`` pixels away
  from the others (independently in y and x), so colour fringes stop revealing where a tile sat.
  The whole jittered window stays inside the cell, so a tile never shows pixels of a neighbour.

Everything works on the whole batch without a Python loop: one gather cuts all tiles of all
images, and offsets, permutations and normalisation are batched tensor ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pretextlab.ops.augment import to_grayscale


@dataclass(frozen=True)
class TileGeometry:
    """Where the cells of a jigsaw layout sit in an image and how big the tiles are."""

    grid: int
    cell: int
    tile: int
    origin_y: int
    origin_x: int
    jitter_px: int

    @property
    def num_tiles(self) -> int:
        return self.grid * self.grid

    @property
    def play(self) -> int:
        """Pixels of random offset available to a tile's window inside its cell (jitter excluded)."""
        return self.cell - self.tile - self.jitter_px


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves upwards (Python's ``round`` rounds 8.5 to 8)."""
    return int(math.floor(value + 0.5))


def tile_geometry(height: int, width: int, grid: int, tile_ratio: float, jitter_px: int = 0) -> TileGeometry:
    """Check that a ``grid``×``grid`` jigsaw fits an ``height``×``width`` image; raise ``ValueError`` if not."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"jigsaw grid={grid!r} must be an integer >= 2 (a 1x1 grid has nothing to shuffle)")
    if not 0.0 < float(tile_ratio) <= 1.0:
        raise ValueError(
            f"jigsaw tile_ratio={tile_ratio!r} must be in (0, 1]: the tile is cut inside its cell "
            "(the original used 64 px tiles in 75 px cells, ratio 0.85)"
        )
    if isinstance(jitter_px, bool) or not isinstance(jitter_px, int) or jitter_px < 0:
        raise ValueError(f"jigsaw color_jitter_px={jitter_px!r} must be an integer >= 0")
    cell = min(height, width) // grid
    if cell < 2:
        largest = max(min(height, width) // 2, 1)
        raise ValueError(
            f"a {grid}x{grid} jigsaw grid does not fit a {height}x{width} image: its cells would be {cell} px "
            f"(need >= 2 px); use grid <= {largest} or larger images (data.source.image_size)"
        )
    tile = round_half_up(cell * float(tile_ratio))
    if tile < 1:
        raise ValueError(
            f"jigsaw tile_ratio={tile_ratio} cuts tiles of round({cell} * {tile_ratio}) = {tile} px from the "
            f"{cell} px cells of a {grid}x{grid} grid on a {height}x{width} image; raise tile_ratio "
            f"to at least {0.5 / cell:.3f}"
        )
    if tile + jitter_px > cell:
        raise ValueError(
            f"jigsaw color_jitter_px={jitter_px} does not fit: {tile} px tiles in {cell} px cells "
            f"({grid}x{grid} grid on a {height}x{width} image) leave {cell - tile} px of room; lower "
            f"color_jitter_px to <= {cell - tile} or tile_ratio"
        )
    origin_y = (height - grid * cell) // 2
    origin_x = (width - grid * cell) // 2
    return TileGeometry(grid, cell, tile, origin_y, origin_x, jitter_px)


def random_tile_corners(
    batch: int,
    channels: int,
    geometry: TileGeometry,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left pixel ``(rows, cols)`` of every channel of every tile: two ``(B, grid², C)`` int64 tensors.

    A tile's window is placed uniformly in its cell with ``jitter_px`` pixels kept free; each
    channel then moves by its own ``0 .. jitter_px`` in y and x (all channels share the window
    when ``jitter_px`` is 0).
    """
    tiles = geometry.num_tiles
    cell_index = torch.arange(tiles, device=device)
    cell_top = geometry.origin_y + (cell_index // geometry.grid) * geometry.cell  # (K,)
    cell_left = geometry.origin_x + (cell_index % geometry.grid) * geometry.cell
    offset_y = torch.randint(0, geometry.play + 1, (batch, tiles, 1), device=device, generator=generator)
    offset_x = torch.randint(0, geometry.play + 1, (batch, tiles, 1), device=device, generator=generator)
    if geometry.jitter_px > 0:
        span = geometry.jitter_px + 1
        offset_y = offset_y + torch.randint(0, span, (batch, tiles, channels), device=device, generator=generator)
        offset_x = offset_x + torch.randint(0, span, (batch, tiles, channels), device=device, generator=generator)
    rows = cell_top.view(1, tiles, 1) + offset_y.expand(batch, tiles, channels)
    cols = cell_left.view(1, tiles, 1) + offset_x.expand(batch, tiles, channels)
    return rows, cols


def gather_tiles(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, tile: int) -> torch.Tensor:
    """Cut ``tile``×``tile`` windows at ``(rows, cols)`` (``(B, K, C)``) from ``(B, C, H, W)``: ``(B, K, C, t, t)``.

    One ``torch.take`` over the whole batch with flat indices: element ``[b, k, c, i, j]`` is
    ``images[b, c, rows[b, k, c] + i, cols[b, k, c] + j]``. (Measured 2.8x faster on CPU than the
    equivalent four-tensor advanced indexing, which computes the same flat index internally.)
    """
    batch, channels, height, width = images.shape
    device = images.device
    span = torch.arange(tile, device=device)
    plane = (torch.arange(batch, device=device).view(batch, 1, 1) * channels
             + torch.arange(channels, device=device).view(1, 1, channels)) * (height * width)  # (B, 1, C)
    corner = plane + rows * width + cols  # (B, K, C) flat index of each window's top-left pixel
    window = span[:, None] * width + span[None, :]  # (t, t) offsets inside a window
    return torch.take(images.contiguous(), corner[..., None, None] + window)


def extract_tiles(
    images: torch.Tensor,
    grid: int = 3,
    tile_ratio: float = 0.85,
    jitter_px: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tiles of every image in cell order (row-major): ``(B, C, H, W)`` → ``(B, grid², C, t, t)``."""
    if images.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    geometry = tile_geometry(height, width, grid, tile_ratio, jitter_px)
    rows, cols = random_tile_corners(batch, channels, geometry, images.device, generator)
    return gather_tiles(images, rows, cols, geometry.tile)


def permute_tiles(tiles: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Shuffle each image's tiles: ``out[b, j] = tiles[b, order[b, j]]`` for ``order`` of shape ``(B, K)``."""
    if order.shape != tiles.shape[:2]:
        raise ValueError(f"order has shape {tuple(order.shape)}, expected (batch, tiles) = {tuple(tiles.shape[:2])}")
    batch_index = torch.arange(tiles.shape[0], device=tiles.device)[:, None]
    return tiles[batch_index, order.to(tiles.device)]


def inverse_permutations(order: torch.Tensor) -> torch.Tensor:
    """Row-wise inverse: ``permute_tiles(permute_tiles(x, p), inverse_permutations(p)) == x``."""
    return torch.argsort(order, dim=-1)


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-3, per_channel: bool = False) -> torch.Tensor:
    """Standardise each tile by its own mean and std (``(..., C, t, t)``).

    ``per_channel=False``: one mean/std over all channels and pixels of a tile; ``True``: every
    colour channel of every tile on its own (the original jigsaw code's per-tile ``Normalize``
    with the tile's per-channel mean and std), which also hides a tile's colour cast.
    ``eps`` bounds the std from below so that a flat tile maps to zeros instead of dividing by 0.
    Two plain reductions (the mean, then the mean square of the centred tile, which the output
    needs anyway; numerically stable) instead of ``torch.std_mean``: 0.66 → 0.075 ms for 1152
    tiles of 3 × 8 × 8 on 2 CPU threads, where std_mean's reduction alone took 0.58 ms.
    """
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    centred = tiles - tiles.mean(dim=dims, keepdim=True)
    # clamp the variance, not the std: sqrt has no finite gradient at 0 (a flat tile)
    std = centred.square().mean(dim=dims, keepdim=True).clamp_min(eps * eps).sqrt()
    return centred / std


def random_grayscale(images: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Turn a random ``fraction`` of a ``(B, 3, H, W)`` batch grayscale (luma in all channels)."""
    if fraction <= 0 or images.shape[1] != 3:
        return images
    chosen = torch.rand(images.shape[0], device=images.device, generator=generator) < fraction
    return torch.where(chosen[:, None, None, None], to_grayscale(images), images)


def make_jigsaw_puzzles(
    images: torch.Tensor,
    permutations: torch.Tensor,
    grid: int = 3,
    tile_ratio: float = 0.85,
    grayscale_fraction: float = 0.0,
    jitter_px: int = 0,
    normalize: bool = True,
    generator: torch.Generator | None = None,
    per_channel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole jigsaw transform: ``(B, C, H, W)`` → shuffled tiles ``(B, grid², C, t, t)`` and targets ``(B,)``.

    Each image gets a permutation index drawn uniformly from the rows of ``permutations``
    (``(N, grid²)``); the target is that index. Grayscale, jitter and per-tile normalisation
    (per channel with ``per_channel``) are applied as configured.
    """
    if permutations.ndim != 2 or permutations.shape[1] != grid * grid:
        raise ValueError(
            f"permutations have shape {tuple(permutations.shape)}, expected (N, {grid * grid}) for a {grid}x{grid} grid"
        )
    images = random_grayscale(images, grayscale_fraction, generator)
    tiles = extract_tiles(images, grid, tile_ratio, jitter_px, generator)
    targets = torch.randint(0, permutations.shape[0], (images.shape[0],), device=images.device, generator=generator)
    puzzles = permute_tiles(tiles, permutations.to(images.device)[targets])
    if normalize:
        puzzles = normalize_tiles(puzzles, per_channel=per_channel)
    return puzzles, targets


def assemble_tiles(tiles: torch.Tensor, grid: int, gap: int = 1, fill: float = 1.0) -> torch.Tensor:
    """Lay ``(B, grid², C, t, t)`` tiles out row-major with ``gap`` px of ``fill`` between them: ``(B, C, S, S)``."""
    batch, count, channels, tile, _ = tiles.shape
    if count != grid * grid:
        raise ValueError(f"got {count} tiles, a {grid}x{grid} grid needs {grid * grid}")
    padded = torch.nn.functional.pad(tiles, (0, gap, 0, gap), value=fill)  # gap on the right and bottom
    step = tile + gap
    layout = padded.view(batch, grid, grid, channels, step, step).permute(0, 3, 1, 4, 2, 5)
    mosaic = layout.reshape(batch, channels, grid * step, grid * step)
    return mosaic[..., : grid * step - gap, : grid * step - gap]
