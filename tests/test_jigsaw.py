"""Jigsaw: tiles are cut inside their cells and shuffled exactly; the task learns; configs compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import TokenBackbone
from pretextlab.backbones.convnet import ConvNet
from pretextlab.ops.permutations import max_hamming_permutations
from pretextlab.ops.tiles import (
    assemble_tiles,
    extract_tiles,
    gather_tiles,
    inverse_permutations,
    make_jigsaw_puzzles,
    normalize_tiles,
    permute_tiles,
    random_grayscale,
    random_tile_corners,
    tile_geometry,
)
from pretextlab.tasks.base import TaskConfigError
from pretextlab.tasks.jigsaw import JigsawTask
from pretextlab.train import run


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRETEXTLAB_CACHE", str(tmp_path / "cache"))


def cell_coded_images(batch: int, size: int, grid: int, channels: int = 3) -> torch.Tensor:
    """Each cell of the layout filled with its own constant (cell index + 1, per channel offset by
    100·c); unused border pixels hold -1, so any pixel outside its cell is caught."""
    geometry = tile_geometry(size, size, grid, 1.0)
    images = torch.full((batch, channels, size, size), -1.0)
    for k in range(grid * grid):
        top = geometry.origin_y + (k // grid) * geometry.cell
        left = geometry.origin_x + (k % grid) * geometry.cell
        for c in range(channels):
            images[:, c, top : top + geometry.cell, left : left + geometry.cell] = k + 1 + 100 * c
    return images


def cell_values(grid: int, channels: int = 3) -> torch.Tensor:
    """``(grid², C)`` value each cell holds in :func:`cell_coded_images`."""
    return torch.arange(1, grid * grid + 1, dtype=torch.float32)[:, None] + 100 * torch.arange(channels)[None, :]


# -- tile extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "grid", "ratio", "jitter"),
    [(32, 3, 0.8, 1), (32, 3, 0.5, 3), (33, 3, 0.85, 0), (96, 3, 0.85, 2), (32, 2, 0.7, 2), (64, 4, 0.75, 1)],
)
def test_every_tile_lies_inside_its_own_cell(size: int, grid: int, ratio: float, jitter: int) -> None:
    images = cell_coded_images(64, size, grid)
    tiles = extract_tiles(images, grid, ratio, jitter, generator=torch.Generator().manual_seed(0))
    expected = cell_values(grid)[None, :, :, None, None].expand_as(tiles)
    assert torch.equal(tiles, expected)


def test_gather_equals_per_image_slicing_with_channel_jitter() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(5, 3, 40, 40, generator=generator)
    geometry = tile_geometry(40, 40, 3, 0.7, 2)
    rows, cols = random_tile_corners(5, 3, geometry, generator=generator)
    tiles = gather_tiles(images, rows, cols, geometry.tile)
    assert tiles.shape == (5, 9, 3, geometry.tile, geometry.tile)
    for b in range(5):
        for k in range(9):
            for c in range(3):
                r, q = int(rows[b, k, c]), int(cols[b, k, c])
                assert torch.equal(tiles[b, k, c], images[b, c, r : r + geometry.tile, q : q + geometry.tile])


def test_offsets_use_the_whole_room_and_channels_move_independently() -> None:
    geometry = tile_geometry(96, 96, 3, 0.75, 2)  # cells 32, tiles 24: room 8 = play 6 + jitter 2
    rows, cols = random_tile_corners(512, 3, geometry, generator=torch.Generator().manual_seed(2))
    cell_top = geometry.origin_y + (torch.arange(9) // 3) * geometry.cell
    within = rows - cell_top.view(1, 9, 1)
    assert int(within.min()) == 0 and int(within.max()) == geometry.cell - geometry.tile
    spread = rows.max(dim=2).values - rows.min(dim=2).values  # per tile, across channels
    assert int(spread.max()) == 2 and (spread > 0).float().mean() > 0.5
    no_jitter = random_tile_corners(64, 3, tile_geometry(96, 96, 3, 0.75, 0))
    assert all(bool((corner == corner[..., :1]).all()) for corner in no_jitter)


def test_shapes_and_dtypes_are_kept() -> None:
    for dtype in (torch.float32, torch.float64):
        images = torch.rand(4, 3, 32, 32, dtype=dtype)
        tiles = extract_tiles(images, 3, 0.8)
        assert tiles.shape == (4, 9, 3, 8, 8) and tiles.dtype == dtype
        puzzles, targets = make_jigsaw_puzzles(images, max_hamming_permutations(10), 3, 0.8, 0.3, 1, True)
        assert puzzles.shape == (4, 9, 3, 8, 8) and puzzles.dtype == dtype
        assert targets.shape == (4,) and targets.dtype == torch.int64 and int(targets.max()) < 10
    one_channel = extract_tiles(torch.rand(2, 1, 32, 32), 2, 0.5)
    assert one_channel.shape == (2, 4, 1, 8, 8)


@pytest.mark.parametrize(
    ("size", "grid", "ratio", "jitter", "fragment"),
    [
        (8, 5, 0.8, 0, "5x5 jigsaw grid does not fit a 8x8 image"),
        (32, 20, 0.8, 0, "use grid <= 16"),
        (32, 3, 0.01, 0, "raise tile_ratio"),
        (32, 3, 1.5, 0, "tile_ratio=1.5 must be in (0, 1]"),
        (32, 3, 0.8, 3, "lower color_jitter_px to <= 2"),
        (32, 1, 0.8, 0, "grid=1"),
    ],
)
def test_a_grid_that_does_not_fit_fails_clearly(size: int, grid: int, ratio: float, jitter: int, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        extract_tiles(torch.rand(2, 3, size, size), grid, ratio, jitter)
    assert fragment in str(error.value)


# -- permutation of tiles ----------------------------------------------------------------------


def test_inverse_permutation_restores_the_original_tile_order_exactly() -> None:
    generator = torch.Generator().manual_seed(3)
    tiles = extract_tiles(torch.rand(16, 3, 32, 32, generator=generator), 3, 0.8, 1, generator)
    table = max_hamming_permutations(100)
    order = table[torch.randint(100, (16,), generator=generator)]
    shuffled = permute_tiles(tiles, order)
    assert not torch.equal(shuffled, tiles)
    for b in range(16):  # position j shows original tile order[b, j]
        for j in range(9):
            assert torch.equal(shuffled[b, j], tiles[b, order[b, j]])
    assert torch.equal(permute_tiles(shuffled, inverse_permutations(order)), tiles)


def test_puzzle_positions_hold_the_tiles_their_target_permutation_names() -> None:
    images = cell_coded_images(64, 32, 3)
    table = max_hamming_permutations(50)
    puzzles, targets = make_jigsaw_puzzles(images, table, 3, 0.8, grayscale_fraction=0.0, jitter_px=1,
                                           normalize=False, generator=torch.Generator().manual_seed(4))
    order = table[targets]
    assert torch.equal(puzzles[:, :, :, 0, 0], cell_values(3)[order])  # tile j came from cell order[j]
    restored = permute_tiles(puzzles, inverse_permutations(order))
    assert torch.equal(restored[:, :, :, 0, 0], cell_values(3).expand(64, 9, 3))
    assert len(set(targets.tolist())) > 10  # targets are drawn from the whole set


def test_tile_normalisation_and_grayscale() -> None:
    tiles = torch.rand(4, 9, 3, 8, 8) * 0.3 + 0.5
    tiles[0, 0] = 0.7  # a flat tile must not become NaN
    normalised = normalize_tiles(tiles)
    assert torch.isfinite(normalised).all() and normalised[0, 0].abs().max() < 1e-3  # float rounding of the mean
    exactly_flat = torch.full((1, 1, 3, 8, 8), 0.5, requires_grad=True)  # its centred values are exact zeros
    (normalize_tiles(exactly_flat) * torch.randn(1, 1, 3, 8, 8)).sum().backward()
    assert exactly_flat.grad is not None and torch.isfinite(exactly_flat.grad).all()
    assert torch.allclose(normalised[1:].mean(dim=(2, 3, 4)), torch.zeros(3, 9), atol=1e-5)
    assert torch.allclose(normalised[1:].std(dim=(2, 3, 4), unbiased=False), torch.ones(3, 9), atol=1e-4)
    images = torch.rand(400, 3, 4, 4)
    gray = random_grayscale(images, 0.3, torch.Generator().manual_seed(5))
    is_gray = (gray[:, 0] == gray[:, 1]).all(dim=(1, 2)) & (gray[:, 1] == gray[:, 2]).all(dim=(1, 2))
    assert 0.2 < is_gray.float().mean() < 0.4
    assert torch.equal(gray[~is_gray], images[~is_gray])
    assert torch.equal(random_grayscale(images, 0.0), images)


def test_assemble_tiles_lays_out_row_major_with_gaps() -> None:
    tiles = cell_values(3, 1)[None, :, :, None, None].expand(2, 9, 1, 4, 4)
    mosaic = assemble_tiles(tiles, 3, gap=1, fill=-1.0)
    assert mosaic.shape == (2, 1, 14, 14)
    assert mosaic[0, 0, 0, 0] == 1 and mosaic[0, 0, 0, 5] == 2 and mosaic[0, 0, 5, 0] == 4 and mosaic[0, 0, 13, 13] == 9
    assert (mosaic[:, :, 4, :] == -1).all() and (mosaic[:, :, :, 9] == -1).all()


# -- the task ----------------------------------------------------------------------------------


def build_task(cfg_overrides: list[str], make_config) -> JigsawTask:
    cfg = make_config(["task=jigsaw", *cfg_overrides])
    return instantiate(cfg.task, backbone=instantiate(cfg.backbone), num_classes=10,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=32)


@pytest.mark.parametrize("backbone", ["convnet", "resnet18"])
def test_config_composes_and_runs_one_step(backbone: str, make_config) -> None:
    task = build_task([f"backbone={backbone}", "task.num_permutations=24", "task.tile_input_size=16"], make_config)
    assert task.chance_accuracy == pytest.approx(1 / 24)
    calls: list[tuple[int, ...]] = []
    task.backbone.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    output = task.pretext_step(torch.rand(3, 3, 32, 32), torch.full((3,), -1))
    output.loss.backward()
    assert calls == [(27, 3, 16, 16)]  # ONE pass over B·9 tiles, resized to tile_input_size
    assert torch.isfinite(output.loss) and 0.0 <= float(output.metrics["acc"]) <= 1.0
    assert output.clean_features is None  # the probe runs the backbone on whole images
    panel = task.visualize(torch.rand(4, 3, 32, 32))["jigsaw"]
    assert panel.ndim == 3 and panel.shape[0] == 3


def test_auto_tile_size_keeps_every_stage_map_at_least_2x2(make_config) -> None:
    # 8 px tiles (3x3 at 32 px) would leave the convnet's blocks 3 and 4 with 1x1 maps.
    task = build_task(["task.normalize_tiles=false"], make_config)
    shapes: list[tuple[int, ...]] = []
    task.backbone.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    task.pretext_step(torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    assert shapes == [(18, 3, 16, 16)]
    task.backbone.eval()  # one 1x1 map of one image cannot be batch-normalised in train mode
    maps = task.backbone.stage_outputs(torch.zeros(1, 3, 16, 16))
    assert min(m.shape[-1] for m in maps) == 2
    assert min(m.shape[-1] for m in task.backbone.stage_outputs(torch.zeros(1, 3, 15, 15))) == 1


def test_tiles_as_cut_with_null_input_size(make_config) -> None:
    task = build_task(["task.normalize_tiles=false", "task.tile_input_size=null"], make_config)
    shapes: list[tuple[int, ...]] = []
    task.backbone.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    task.pretext_step(torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    assert shapes == [(18, 3, 8, 8)]


def test_auto_tile_size_leaves_batchnorm_statistics_alone() -> None:
    backbone = ConvNet()
    before = [b.clone() for b in backbone.buffers()]
    JigsawTask(backbone=backbone, image_size=32)
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.buffers()))
    assert backbone.training


def test_per_channel_tile_normalisation_standardises_each_channel() -> None:
    # float64: in float32 the mean of 36 standardised values of ~5 carries ~1e-5 of rounding alone
    scale = torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64).view(3, 1, 1)
    tiles = torch.rand(2, 4, 3, 6, 6, dtype=torch.float64) * scale + 5.0
    out = normalize_tiles(tiles, per_channel=True)
    zeros, ones = torch.zeros(2, 4, 3, dtype=torch.float64), torch.ones(2, 4, 3, dtype=torch.float64)
    assert torch.allclose(out.mean(dim=(-2, -1)), zeros, atol=1e-9)
    assert torch.allclose(out.square().mean(dim=(-2, -1)), ones, atol=1e-3)
    whole = normalize_tiles(tiles, per_channel=False)
    assert not torch.allclose(whole.mean(dim=(-2, -1)), zeros, atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"grid": 17}, "grid does not fit a 32x32 image"),
        ({"num_permutations": 400_000}, "9! = 362,880"),
        ({"color_jitter_px": 5}, "color_jitter_px=5 does not fit"),
        ({"grayscale_fraction": 1.5}, "grayscale_fraction"),
        ({"tile_input_size": 0}, "tile_input_size"),
    ],
)
def test_bad_task_parameters_fail_at_construction(kwargs: dict, fragment: str) -> None:
    with pytest.raises(TaskConfigError) as error:
        JigsawTask(backbone=ConvNet(), image_size=32, **kwargs)
    assert fragment in str(error.value)


def test_a_transformer_backbone_is_refused() -> None:
    with pytest.raises(TaskConfigError, match="convolutional backbone"):
        JigsawTask(backbone=TokenBackbone(), image_size=32)


def test_short_run_on_synthetic_learns_well_above_chance(make_config) -> None:
    # 10 permutations (chance 0.10), tiles fed as cut (8 px, the default): 3 epochs x 4 steps.
    # Measured 2026-12-01 on the current scenes (seed 0): val_acc 0.48, train_loss 1.46. At 2 epochs
    # it was 0.31 with the whole-image online probe and 0.27 with the tile-mean probe (the probe's
    # extra train-mode pass had been warming the BN running statistics), too close to the 3x-chance
    # bar; a non-learning task stays near 0.10 however long it runs.
    cfg = make_config(["task=jigsaw", "task.num_permutations=10", "trainer.max_epochs=3"])
    results = run(cfg)
    assert results["status"] == "ok"
    assert results["chance_accuracy"] == pytest.approx(0.1)
    assert results["pretext"]["val_acc"] >= 3 * results["chance_accuracy"]
    assert results["pretext"]["train_loss"] < 2.0  # ln(10) = 2.30 at chance
