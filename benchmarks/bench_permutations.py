"""Jigsaw figures: permutation-set selection time, and the batched tile transform vs a per-image loop.

    .venv/bin/python benchmarks/bench_permutations.py            # N = 100, 1000, 2000; batch 256
    .venv/bin/python benchmarks/bench_permutations.py --sizes 100 1000 --repeats 5

Selection runs with the on-disk cache disabled (it times the computation, not a file read). The
first selection also pays for enumerating the 9! candidates once per process; that is printed
separately. The per-image reference cuts, shuffles and normalises tiles with Python loops over
images and tiles, the way a Dataset ``__getitem__`` would; it shares the random tile corners with
the batched transform and the script checks that both give identical tiles.
"""

from __future__ import annotations

import argparse
import time

import torch

from pretextlab.ops.permutations import (
    _lexicographic_candidates,
    compute_max_hamming_permutations,
    hamming_stats,
)
from pretextlab.ops.tiles import (
    gather_tiles,
    make_jigsaw_puzzles,
    normalize_tiles,
    permute_tiles,
    random_grayscale,
    random_tile_corners,
    tile_geometry,
)


def time_selection(sizes: list[int], grid: int) -> None:
    start = time.perf_counter()
    _lexicographic_candidates(grid * grid)
    print(f"enumerate {grid * grid}! candidates: {time.perf_counter() - start:.2f} s (once per process)")
    for n in sizes:
        start = time.perf_counter()
        table = compute_max_hamming_permutations(n, grid)
        seconds = time.perf_counter() - start
        stats = hamming_stats(table)
        print(f"select N={n:5d} (grid {grid}): {seconds:6.2f} s   Hamming min {stats.minimum}, mean {stats.mean:.3f}")


def batched_transform(images: torch.Tensor, order: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                      tile: int) -> torch.Tensor:
    """The library path: one gather, one permutation gather, one normalisation."""
    return normalize_tiles(permute_tiles(gather_tiles(images, rows, cols, tile), order))


def per_image_reference(images: torch.Tensor, order: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                        tile: int) -> torch.Tensor:
    """What a per-sample Dataset would do: loop over images, tiles and channels, slice, stack."""
    puzzles = []
    for b in range(images.shape[0]):
        tiles = []
        for k in range(order.shape[1]):
            source = int(order[b, k])
            channels = [
                images[b, c, int(rows[b, source, c]) : int(rows[b, source, c]) + tile,
                       int(cols[b, source, c]) : int(cols[b, source, c]) + tile]
                for c in range(images.shape[1])
            ]
            piece = torch.stack(channels)
            tiles.append((piece - piece.mean()) / piece.std(unbiased=False).clamp_min(1e-3))
        puzzles.append(torch.stack(tiles))
    return torch.stack(puzzles)


def time_transform(batch: int, size: int, repeats: int, grid: int = 3, tile_ratio: float = 0.8,
                   jitter_px: int = 1) -> None:
    generator = torch.Generator().manual_seed(0)
    images = random_grayscale(torch.rand(batch, 3, size, size, generator=generator), 0.3, generator)
    geometry = tile_geometry(size, size, grid, tile_ratio, jitter_px)
    rows, cols = random_tile_corners(batch, 3, geometry, generator=generator)
    order = torch.stack([torch.randperm(grid * grid, generator=generator) for _ in range(batch)])
    fast = batched_transform(images, order, rows, cols, geometry.tile)
    slow = per_image_reference(images, order, rows, cols, geometry.tile)
    if not torch.allclose(fast, slow, atol=1e-5):
        raise AssertionError("batched transform and per-image reference disagree")
    results = {}
    for name, function in (("batched", batched_transform), ("per-image loop", per_image_reference)):
        start = time.perf_counter()
        for _ in range(repeats):
            function(images, order, rows, cols, geometry.tile)
        results[name] = batch * repeats / (time.perf_counter() - start)
    table = compute_max_hamming_permutations(100, grid)
    table_tensor = torch.from_numpy(table)
    start = time.perf_counter()
    for _ in range(repeats):
        make_jigsaw_puzzles(images, table_tensor, grid, tile_ratio, 0.3, jitter_px, True)
    results["make_jigsaw_puzzles"] = batch * repeats / (time.perf_counter() - start)
    print(f"images {size:3d} px, batch {batch}, {grid}x{grid} grid, {geometry.tile} px tiles: "
          f"batched {results['batched']:9.0f} img/s, per-image loop {results['per-image loop']:7.0f} img/s "
          f"(x{results['batched'] / results['per-image loop']:.0f}); "
          f"make_jigsaw_puzzles with its random draws {results['make_jigsaw_puzzles']:9.0f} img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 2000])
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    time_selection(args.sizes, args.grid)
    for size in args.image_sizes:
        time_transform(args.batch, size, args.repeats)


if __name__ == "__main__":
    main()
