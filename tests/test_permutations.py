"""Jigsaw permutation sets: the fast greedy equals the naive one; cache; stats; errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pretextlab
from pretextlab.ops import permutations as perms_module
from pretextlab.ops.permutations import (
    EXACT_RULE,
    cache_path,
    compute_max_hamming_permutations,
    hamming_stats,
    max_hamming_permutations,
    selection_rule,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder, so no test reads another's (or the user's) files."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("PRETEXTLAB_CACHE", str(folder))
    return folder


def naive_python_greedy(n: int, tiles: int) -> list[tuple[int, ...]]:
    """The textbook algorithm in plain Python: at each pick, scan every candidate in
    lexicographic order, recompute its minimum distance to every chosen permutation, keep the
    first strict maximum. O(tiles!·N²)."""
    candidates = list(itertools.permutations(range(tiles)))
    chosen = [candidates[0]]
    while len(chosen) < n:
        best, best_distance = None, -1
        for candidate in candidates:
            if candidate in chosen:
                continue
            distance = min(sum(a != b for a, b in zip(candidate, other)) for other in chosen)
            if distance > best_distance:
                best, best_distance = candidate, distance
        chosen.append(best)
    return chosen


def naive_numpy_greedy(n: int, tiles: int) -> np.ndarray:
    """The same naive algorithm with the inner distance loop in numpy (fast enough for 9! and N ≤ 6):
    every pick recomputes the distances of all candidates to all chosen rows."""
    candidates = np.array(list(itertools.permutations(range(tiles))), dtype=np.int64)
    chosen_index = [0]
    while len(chosen_index) < n:
        chosen = candidates[chosen_index]  # (k, tiles)
        distance = (candidates[:, None, :] != chosen[None, :, :]).sum(axis=2).min(axis=1)
        distance[chosen_index] = -1
        best = np.flatnonzero(distance == distance.max())[0]  # first in lexicographic order
        chosen_index.append(int(best))
    return candidates[chosen_index]


@pytest.mark.parametrize("n", range(1, 25))
def test_grid2_equals_naive_python_greedy_for_every_n(n: int) -> None:
    result = max_hamming_permutations(n, grid=2, cache=False)
    assert result.tolist() == [list(p) for p in naive_python_greedy(n, 4)]


def test_grid3_equals_naive_greedy_up_to_six() -> None:
    naive = naive_numpy_greedy(6, 9)
    for n in range(1, 7):
        assert np.array_equal(max_hamming_permutations(n, grid=3, cache=False).numpy(), naive[:n]), n


def test_grid3_naive_python_agrees_for_three() -> None:
    # The pure-Python reference (no numpy at all) on the real 9! candidate set, small N.
    expected = naive_python_greedy(3, 9)
    assert max_hamming_permutations(3, grid=3, cache=False).tolist() == [list(p) for p in expected]


def test_set_shape_dtype_identity_first_distinct_rows() -> None:
    result = max_hamming_permutations(100, grid=3, cache=False)
    assert result.shape == (100, 9) and result.dtype == torch.int64
    assert result[0].tolist() == list(range(9))
    assert torch.equal(result.sort(dim=1).values, torch.arange(9).expand(100, 9))  # rows are permutations
    assert len({tuple(row) for row in result.tolist()}) == 100


def test_greedy_sets_are_prefixes_of_larger_sets() -> None:
    small = max_hamming_permutations(30, cache=False)
    large = max_hamming_permutations(120, cache=False)
    assert torch.equal(large[:30], small)


def test_all_permutations_of_grid2_are_reachable() -> None:
    full = max_hamming_permutations(math.factorial(4), grid=2, cache=False)
    assert sorted(map(tuple, full.tolist())) == list(itertools.permutations(range(4)))


def test_package_level_function_is_the_same_selection() -> None:
    assert torch.equal(pretextlab.max_hamming_permutations(8), max_hamming_permutations(8, cache=False))
    assert torch.equal(pretextlab.max_hamming_permutations(5, grid=2), max_hamming_permutations(5, 2, cache=False))


def brute_force_stats(table: np.ndarray) -> tuple[int, float]:
    distances = [int((a != b).sum()) for i, a in enumerate(table) for j, b in enumerate(table) if i != j]
    return min(distances), sum(distances) / len(distances)


def test_hamming_stats_match_brute_force() -> None:
    table = max_hamming_permutations(40, cache=False).numpy()
    stats = hamming_stats(table, chunk_rows=7)  # chunks that do not divide N exercise the chunking
    minimum, mean = brute_force_stats(table)
    assert stats.minimum == minimum and stats.mean == pytest.approx(mean, abs=1e-12)
    assert stats.num_permutations == 40


def test_hamming_stats_known_values() -> None:
    # The first four picks on 2x2 are the Klein four-group: every pair differs in all 4 positions.
    stats = hamming_stats(max_hamming_permutations(4, grid=2, cache=False))
    assert (stats.minimum, stats.mean) == (4, 4.0)
    assert hamming_stats(torch.tensor([[0, 1, 2], [0, 2, 1], [0, 1, 2]])).minimum == 0  # a duplicate
    assert hamming_stats(torch.arange(9)[None]).minimum == 0


def test_the_paper_scale_set_keeps_a_large_minimum_distance() -> None:
    # Measured: N=100 → min 6, N=1000 → min 5 (mean 8.03 / 7.91); the greedy never drops below these.
    stats = hamming_stats(max_hamming_permutations(100, cache=False))
    assert stats.minimum == 6 and stats.mean == pytest.approx(8.0269, abs=1e-3)


def test_cache_round_trip_reads_the_file(monkeypatch: pytest.MonkeyPatch, _private_cache: Path) -> None:
    first = max_hamming_permutations(12)
    path = cache_path(12, 3, EXACT_RULE)
    assert path.exists() and path.parent == _private_cache / "permutations"
    assert EXACT_RULE in path.name and "grid3" in path.name and "n12" in path.name

    def refuse(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the cached set should have been used")

    monkeypatch.setattr(perms_module, "compute_max_hamming_permutations", refuse)
    assert torch.equal(max_hamming_permutations(12), first)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_rows", "not_permutations"])
def test_corrupt_cache_is_recomputed(damage: str) -> None:
    expected = max_hamming_permutations(10, cache=False)
    path = cache_path(10, 3, EXACT_RULE)
    path.parent.mkdir(parents=True, exist_ok=True)
    max_hamming_permutations(10)
    if damage == "garbage":
        path.write_bytes(b"\x00not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif damage == "wrong_rows":
        np.save(path, expected.numpy()[:5])
    else:
        np.save(path, np.zeros((10, 9), dtype=np.int64))
    assert torch.equal(max_hamming_permutations(10), expected)
    assert np.array_equal(np.load(path), expected.numpy())  # and the file was repaired


def test_cache_disabled_writes_nothing(_private_cache: Path) -> None:
    max_hamming_permutations(7, cache=False)
    assert not _private_cache.exists()


@pytest.mark.parametrize(
    ("n", "grid", "fragment"),
    [
        (0, 3, "between 1 and 362880"),
        (-5, 3, "between 1 and 362880"),
        (400_000, 3, "9! = 362,880"),
        (25, 2, "4! = 24"),
        (2.5, 3, "must be an integer"),
        (True, 3, "must be an integer"),
        (10, 1, "grid=1"),
    ],
)
def test_invalid_requests_name_the_limit(n: object, grid: int, fragment: str) -> None:
    with pytest.raises(ValueError, match="jigsaw") as error:
        max_hamming_permutations(n, grid=grid)  # type: ignore[arg-type]
    assert fragment in str(error.value)


def test_larger_grids_use_a_seeded_random_pool(_private_cache: Path) -> None:
    first = max_hamming_permutations(20, grid=4, pool_size=2000)
    again = max_hamming_permutations(20, grid=4, pool_size=2000, cache=False)
    assert torch.equal(first, again)  # deterministic
    assert first.shape == (20, 16) and first[0].tolist() == list(range(16))
    assert len({tuple(r) for r in first.tolist()}) == 20
    assert hamming_stats(first).minimum >= 12  # measured 13 with pool 100k; random pairs average ~15
    rule = selection_rule(4, pool_size=2000)
    assert rule != EXACT_RULE and "pool2000" in rule and cache_path(20, 4, rule).exists()
    other_seed = compute_max_hamming_permutations(20, grid=4, pool_size=2000, pool_seed=1)
    assert not torch.equal(first, torch.from_numpy(other_seed))
    with pytest.raises(ValueError, match="pool of 2,000"):
        max_hamming_permutations(2001, grid=4, pool_size=2000)
