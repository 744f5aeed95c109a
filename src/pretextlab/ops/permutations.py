"""Jigsaw permutation sets (Noroozi & Favaro 2016) chosen for maximal minimum Hamming distance.

Selection rule (``"greedy-minmax-lex"``, grids 2 and 3): the candidates are all ``(grid²)!``
permutations of the tiles in lexicographic order (``itertools.permutations`` order, so the identity
is candidate 0). The set starts with the identity; each further pick is the candidate whose minimum
Hamming distance to the permutations already chosen is largest, ties going to the first candidate
in lexicographic order.

The naive greedy recomputes every candidate's distance to every chosen permutation at every pick:
O((grid²)!·N²) Python work, tens of minutes for N = 100. Here the running minimum distance of all
candidates lives in one numpy array and is updated with the distances to the newest pick only, so a
pick costs one vectorised pass over the candidates: O((grid²)!·N) in total (see
``benchmarks/bench_permutations.py`` for measured times). Already-chosen candidates sit at distance
0 and are therefore never picked again.

Because the greedy never revisits a choice, the set for N is the first N rows of the set for any
larger N.

Larger grids (``"greedy-minmax-pool<P>-seed<S>"``): 4×4 has 16! ≈ 2·10¹³ candidates, which cannot
be enumerated. There the same greedy runs over a pool of the identity plus ``P - 1`` distinct
permutations drawn uniformly at random with a fixed seed (ties go to the earlier pool entry). The
result is deterministic but only approximately max-min over all permutations, and N may not
exceed the pool size. The rule name, pool size and seed are part of the cache key.

Sets are cached as ``.npy`` files under ``$PRETEXTLAB_CACHE`` (default ``~/.cache/pretextlab``),
keyed by grid, N and selection rule; a missing, unreadable or invalid cache file is recomputed.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pretextlab.io import atomic_write_bytes

log = logging.getLogger(__name__)

#: Selection rule of the exact greedy over all permutations (grids 2 and 3).
EXACT_RULE = "greedy-minmax-lex"
#: Largest grid whose permutations are enumerated exactly (9! = 362,880 candidates).
MAX_EXACT_GRID = 3
#: Candidate pool of the approximate rule for grids above :data:`MAX_EXACT_GRID`.
DEFAULT_POOL_SIZE = 100_000
#: Largest grid supported: Hamming distances up to grid² are counted in uint8.
MAX_GRID = 15
DEFAULT_POOL_SEED = 0


@dataclass(frozen=True)
class HammingStats:
    """Pairwise Hamming distances between the distinct rows of a permutation set."""

    minimum: int
    mean: float
    num_permutations: int


def cache_dir() -> Path:
    """Where permutation sets are cached: ``$PRETEXTLAB_CACHE`` or ``~/.cache/pretextlab``."""
    root = os.environ.get("PRETEXTLAB_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "pretextlab"
    return base / "permutations"


def selection_rule(grid: int, pool_size: int = DEFAULT_POOL_SIZE, pool_seed: int = DEFAULT_POOL_SEED) -> str:
    """The name of the rule that :func:`max_hamming_permutations` applies to ``grid``."""
    if grid <= MAX_EXACT_GRID:
        return EXACT_RULE
    return f"greedy-minmax-pool{pool_size}-seed{pool_seed}"


def cache_path(n: int, grid: int, rule: str) -> Path:
    """The cache file of the set of ``n`` permutations of a ``grid``×``grid`` puzzle under ``rule``."""
    return cache_dir() / f"grid{grid}_n{n}_{rule}.npy"


def validate_request(n: int, grid: int, pool_size: int = DEFAULT_POOL_SIZE) -> None:
    """Raise ``ValueError`` naming the limit when ``n`` permutations of ``grid`` cannot be chosen."""
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 2 <= grid <= MAX_GRID:
        raise ValueError(
            f"jigsaw grid={grid!r} must be an integer from 2 to {MAX_GRID} (a 1x1 grid has nothing to shuffle; "
            "distances are counted in uint8)"
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"jigsaw num_permutations={n!r} must be an integer >= 1")
    tiles = grid * grid
    if grid <= MAX_EXACT_GRID:
        limit = math.factorial(tiles)
        if not 1 <= n <= limit:
            raise ValueError(
                f"jigsaw num_permutations={n} is outside 1 .. {tiles}! = {limit:,}: a {grid}x{grid} grid has only "
                f"{limit:,} distinct tile orders; choose num_permutations between 1 and {limit}"
            )
    elif not 1 <= n <= pool_size:
        raise ValueError(
            f"jigsaw num_permutations={n} is outside 1 .. {pool_size:,}: for a {grid}x{grid} grid the set is chosen "
            f"from a random pool of {pool_size:,} candidates ({tiles}! is too many to enumerate); choose "
            f"num_permutations <= {pool_size}"
        )


@lru_cache(maxsize=2)
def _lexicographic_candidates(tiles: int) -> np.ndarray:
    """All ``tiles!`` permutations in lexicographic order, position-major ``(tiles, tiles!)`` uint8.

    Position-major because each pick compares one position of all candidates at a time: a
    contiguous row per position keeps that pass streaming through memory.
    """
    table = np.array(list(itertools.permutations(range(tiles))), dtype=np.uint8)
    table.setflags(write=False)
    return np.ascontiguousarray(table.T)


def _random_pool(tiles: int, pool_size: int, seed: int) -> np.ndarray:
    """Identity + ``pool_size - 1`` distinct random permutations, position-major ``(tiles, pool)`` uint8."""
    rng = np.random.default_rng(seed)
    identity = np.arange(tiles, dtype=np.uint8)
    chosen = [identity]
    seen = {identity.tobytes()}
    while len(chosen) < pool_size:
        # Collisions are vanishingly rare for tiles >= 16, so a few oversized draws always suffice.
        draws = np.argsort(rng.random((pool_size, tiles)), axis=1).astype(np.uint8)
        for row in draws:
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                chosen.append(row)
                if len(chosen) == pool_size:
                    break
    return np.ascontiguousarray(np.stack(chosen).T)


def _greedy_max_min(candidates: np.ndarray, n: int) -> np.ndarray:
    """Greedy max-min Hamming selection over position-major ``candidates``, starting at column 0.

    ``min_distance[i]`` is candidate i's distance to the nearest chosen permutation; each pick
    takes its first maximum (``np.argmax`` returns the first, which gives the lexicographic tie
    break) and lowers every entry to the distance to the new pick where that is smaller.
    """
    tiles, count = candidates.shape
    picks = np.empty(n, dtype=np.int64)
    min_distance = np.full(count, np.iinfo(np.uint8).max, dtype=np.uint8)
    matches = np.empty(count, dtype=np.uint8)
    equal = np.empty(count, dtype=bool)
    pick = 0  # the identity, by construction of both candidate tables
    for step in range(n):
        picks[step] = pick
        chosen = candidates[:, pick]
        matches.fill(0)
        for position in range(tiles):
            np.equal(candidates[position], chosen[position], out=equal)
            matches += equal
        # Hamming distance = tiles - matches; keep the smaller of old minimum and new distance.
        np.minimum(min_distance, np.uint8(tiles) - matches, out=min_distance)
        if step + 1 < n:
            pick = int(np.argmax(min_distance))
    return candidates[:, picks].T.astype(np.int64)


def compute_max_hamming_permutations(
    n: int, grid: int = 3, pool_size: int = DEFAULT_POOL_SIZE, pool_seed: int = DEFAULT_POOL_SEED
) -> np.ndarray:
    """Run the selection (no cache): ``(n, grid²)`` int64 array, identity first."""
    validate_request(n, grid, pool_size)
    tiles = grid * grid
    if grid <= MAX_EXACT_GRID:
        candidates = _lexicographic_candidates(tiles)
    else:
        candidates = _random_pool(tiles, pool_size, pool_seed)
    return _greedy_max_min(candidates, n)


def _is_valid_set(array: object, n: int, tiles: int) -> bool:
    if not isinstance(array, np.ndarray) or array.shape != (n, tiles) or array.dtype != np.int64:
        return False
    if not np.array_equal(np.sort(array, axis=1), np.broadcast_to(np.arange(tiles), (n, tiles))):
        return False  # some row is not a permutation
    if not np.array_equal(array[0], np.arange(tiles)):
        return False
    return len(np.unique(array, axis=0)) == n


def _load_cached(path: Path, n: int, tiles: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        log.warning("permutation cache %s is unreadable (%s); recomputing it", path, error)
        return None
    if not _is_valid_set(array, n, tiles):
        log.warning("permutation cache %s does not hold %d permutations of %d tiles; recomputing it", path, n, tiles)
        return None
    return array


def _store(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:  # a read-only home must not stop training: the set is just recomputed next time
        log.warning("could not cache permutations at %s (%s); set PRETEXTLAB_CACHE to a writable folder", path, error)


def max_hamming_permutations(
    n: int,
    grid: int = 3,
    *,
    cache: bool = True,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_seed: int = DEFAULT_POOL_SEED,
) -> torch.Tensor:
    """``(n, grid²)`` int64 permutations chosen greedily for maximal minimum Hamming distance.

    Row 0 is the identity; row ``k`` lists, for each position of the shuffled puzzle, which
    original tile sits there. See the module docstring for the selection rule per grid size.
    ``cache=False`` neither reads nor writes the on-disk cache. ``pool_size``/``pool_seed`` only
    matter for grids above 3×3.
    """
    validate_request(n, grid, pool_size)
    tiles = grid * grid
    path = cache_path(int(n), int(grid), selection_rule(grid, pool_size, pool_seed))
    array = _load_cached(path, n, tiles) if cache else None
    if array is None:
        array = compute_max_hamming_permutations(n, grid, pool_size, pool_seed)
        if cache:
            _store(path, array)
    return torch.from_numpy(np.array(array, dtype=np.int64))


def hamming_stats(permutations: torch.Tensor | np.ndarray, chunk_rows: int = 512) -> HammingStats:
    """Minimum and mean Hamming distance over all pairs of distinct rows of a permutation set.

    Rows are compared in chunks so that large sets (10k permutations) stay within memory.
    A set of one permutation has no pairs: minimum 0 and mean 0.0 by convention.
    """
    table = np.asarray(permutations.cpu() if isinstance(permutations, torch.Tensor) else permutations)
    if table.ndim != 2:
        raise ValueError(f"expected an (N, tiles) permutation table, got shape {table.shape}")
    count = table.shape[0]
    if count < 2:
        return HammingStats(minimum=0, mean=0.0, num_permutations=count)
    minimum = table.shape[1]
    total = 0
    for start in range(0, count, chunk_rows):
        block = table[start : start + chunk_rows]
        distances = (block[:, None, :] != table[None, :, :]).sum(axis=2)  # (chunk, N)
        rows = np.arange(start, start + len(block))
        distances[np.arange(len(block)), rows] = table.shape[1] + 1  # exclude self-pairs from the minimum
        minimum = min(minimum, int(distances.min()))
        distances[np.arange(len(block)), rows] = 0
        total += int(distances.sum())
    pairs = count * (count - 1)
    return HammingStats(minimum=minimum, mean=total / pairs, num_permutations=count)
