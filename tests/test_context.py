"""Context prediction: patch-pair geometry, countermeasures, the task module and a short run."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from pretextlab.ops.patches import (
    NEIGHBOUR_CELLS,
    PatchLayout,
    default_patch_layout,
    drop_color_channels,
    project_out_green_magenta,
    sample_patch_pairs,
)
from pretextlab.tasks.base import TaskConfigError
from pretextlab.tasks.context import ContextTask
from pretextlab.train import run
from tests.conftest import TokenBackbone


def coordinate_images(batch: int, size: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column, channel 2 the image's index."""
    rows = torch.arange(size, dtype=torch.float32).view(1, size, 1).expand(batch, size, size)
    cols = torch.arange(size, dtype=torch.float32).view(1, 1, size).expand(batch, size, size)
    index = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1).expand(batch, size, size)
    return torch.stack([rows, cols, index], dim=1)


def patch_top_left(patches: torch.Tensor) -> torch.Tensor:
    """(N, 2) top-left pixel read from the coordinate channels of the patch content itself."""
    return torch.stack([patches[:, 0, 0, 0], patches[:, 1, 0, 0]], dim=1).long()


def test_default_layout_scales_the_original_and_fits() -> None:
    assert default_patch_layout(398) == PatchLayout(patch=96, gap=48, jitter=7)  # the paper's layout
    assert default_patch_layout(32) == PatchLayout(patch=8, gap=3, jitter=1)
    for size in range(11, 260):
        layout = default_patch_layout(size)
        layout.validate(size, size)  # raises if it does not fit or neighbours could touch
        assert layout.gap > 2 * layout.jitter and layout.jitter >= 1


@pytest.mark.parametrize("size", [32, 96])
def test_neighbour_sits_where_the_label_says(size: int) -> None:
    layout = default_patch_layout(size)
    batch, pairs_per_image = 32, 8
    images = coordinate_images(batch, size)
    pairs = sample_patch_pairs(images, layout, pairs_per_image, generator=torch.Generator().manual_seed(0))
    count = batch * pairs_per_image
    p = layout.patch

    # Every patch is an exact, contiguous crop of its own image (read from its content).
    expected_image = torch.arange(batch).repeat_interleave(pairs_per_image)
    assert torch.equal(pairs.image_index, expected_image)
    offsets = torch.arange(p, dtype=torch.float32)
    for patches, reported in ((pairs.centre, pairs.centre_yx), (pairs.neighbour, pairs.neighbour_yx)):
        top_left = patch_top_left(patches)
        assert torch.equal(top_left, reported)
        assert torch.equal(patches[:, 0], (top_left[:, 0, None, None] + offsets.view(1, p, 1)).expand(count, p, p).float())
        assert torch.equal(patches[:, 1], (top_left[:, 1, None, None] + offsets.view(1, 1, p)).expand(count, p, p).float())
        assert torch.equal(patches[:, 2], expected_image.view(count, 1, 1).expand(count, p, p).float())
        assert top_left.min() >= 0 and (top_left + p).max() <= size  # inside the image, no wrap-around

    # The displacement centre → neighbour is the label's cell offset plus at most 2·jitter per axis.
    displacement = patch_top_left(pairs.neighbour) - patch_top_left(pairs.centre)
    cells = torch.tensor(NEIGHBOUR_CELLS)[pairs.labels]  # (N, 2) row, column on the 3x3 layout
    residual = displacement - (cells - 1) * layout.step
    assert residual.abs().max() <= 2 * layout.jitter
    # Both extremes of the jitter occur (the jitter is really there), and every label is drawn.
    assert residual.min() == -2 * layout.jitter and residual.max() == 2 * layout.jitter
    assert set(pairs.labels.tolist()) == set(range(8))
    # Decoding the label from the displacement alone gives the label back.
    decoded_cell = torch.round(displacement.float() / layout.step).long() + 1
    decoded = torch.tensor([NEIGHBOUR_CELLS.index((r, c)) for r, c in decoded_cell.tolist()])
    assert torch.equal(decoded, pairs.labels)
    # The centre patch sits at its un-jittered cell ±jitter with the layout fully inside the image.
    assert pairs.centre_yx.min() >= layout.step and pairs.centre_yx.max() <= size - layout.extent + layout.step + 2 * layout.jitter


def test_gap_is_respected() -> None:
    layout = default_patch_layout(32)
    pairs = sample_patch_pairs(coordinate_images(64, 32), layout, 8, generator=torch.Generator().manual_seed(1))
    displacement = (patch_top_left(pairs.neighbour) - patch_top_left(pairs.centre)).abs()
    # Pixels strictly between the two patches along the axis where they are apart (Chebyshev).
    separation = (displacement - layout.patch).max(dim=1).values
    assert separation.min() == layout.gap - 2 * layout.jitter  # the closest possible, and no closer
    assert separation.min() >= 1  # never touching: no edge continues across the pair
    # No pixel belongs to both patches.
    centre_pixels = pairs.centre[:, 0] * 1000 + pairs.centre[:, 1]
    neighbour_pixels = pairs.neighbour[:, 0] * 1000 + pairs.neighbour[:, 1]
    shared = (centre_pixels.flatten(1)[:, :, None] == neighbour_pixels.flatten(1)[:, None, :]).any()
    assert not shared


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_shapes_and_dtypes(dtype: torch.dtype) -> None:
    images = (torch.rand(6, 3, 32, 40) * 200).to(dtype)
    pairs = sample_patch_pairs(images, default_patch_layout(32), pairs_per_image=3)
    for patches in (pairs.centre, pairs.neighbour):
        assert patches.shape == (18, 3, 8, 8) and patches.dtype == dtype and patches.is_contiguous()
    assert pairs.labels.shape == (18,) and pairs.labels.dtype == torch.int64
    assert pairs.labels.min() >= 0 and pairs.labels.max() <= 7
    assert pairs.centre_yx.shape == pairs.neighbour_yx.shape == (18, 2)


def test_layout_that_does_not_fit_fails_clearly() -> None:
    with pytest.raises(ValueError, match=r"needs 40 px .* images are 32x32.*patch=8, gap=3, jitter=1"):
        PatchLayout(patch=10, gap=4, jitter=1).validate(32, 32)
    with pytest.raises(ValueError, match=r"gap=2 must exceed 2 \* jitter=2"):
        PatchLayout(patch=8, gap=2, jitter=1).validate(32, 32)
    with pytest.raises(ValueError, match="at least 11 px"):
        default_patch_layout(10)
    from pretextlab.backbones import build_backbone

    with pytest.raises(TaskConfigError, match=r"needs 90 px .*images are 64x64.*task.patch_size"):
        ContextTask(backbone=build_backbone("convnet"), patch_size=24, image_size=32, min_cut_size=64)
    with pytest.raises(TaskConfigError, match=r"needs 44 px .*task.patch_size"):
        ContextTask(backbone=build_backbone("convnet"), patch_size=12, image_size=32)


def test_the_layout_has_room_to_move_at_32_px() -> None:
    from pretextlab.backbones import build_backbone

    task = ContextTask(backbone=build_backbone("convnet"), image_size=32, min_cut_size=64, layout_room=None)
    assert task.cut_size == 64 and task.layout == PatchLayout(patch=14, gap=6, jitter=1)
    cut = task.cut_images(torch.rand(64, 3, 32, 32))
    pairs = sample_patch_pairs(cut, task.layout, 4, generator=torch.Generator().manual_seed(0))
    origin = pairs.centre_yx - task.layout.jitter - task.layout.step  # up to the centre's own jitter
    assert origin.min() <= -1 and origin.max() >= 64 - task.layout.extent + 1  # 9 origins per axis, ±1 jitter
    # Without the upsampling and the room the layout fills the image: a single origin.
    tight = ContextTask(backbone=build_backbone("convnet"), image_size=32, min_cut_size=0, layout_room=0)
    assert tight.layout == PatchLayout(patch=8, gap=3, jitter=1) and tight.layout.extent == 32


def test_color_dropping_keeps_one_channel_and_noises_the_others() -> None:
    torch.manual_seed(0)
    patches = torch.randn(300, 3, 8, 8) * 2.0
    dropped = drop_color_channels(patches, noise_ratio=0.01)
    kept = (dropped == patches).flatten(2).all(dim=2)  # (N, 3): which channels survived untouched
    assert torch.equal(kept.sum(dim=1), torch.ones(300, dtype=torch.long))
    assert kept.float().mean(dim=0).min() > 0.2  # each channel is the kept one about a third of the time
    kept_std = patches.flatten(2).std(dim=2, correction=0)[kept]
    noise = dropped[~kept.view(300, 3, 1, 1).expand_as(dropped)].view(300, 2, 64)
    ratio = noise.std(dim=2).mean(dim=1) / kept_std
    assert 0.008 < ratio.mean() < 0.012  # 1/100 of the kept channel's std, as in the paper


def test_green_magenta_projection() -> None:
    colours = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]).view(4, 3, 1, 1)
    projected = project_out_green_magenta(colours).view(4, 3)
    assert torch.allclose(projected[0], colours[0].view(3))  # grey stays
    assert torch.allclose(projected[1], colours[1].view(3))  # the red-blue axis stays
    assert torch.allclose(projected[2], torch.full((3,), 1 / 3))  # green becomes grey
    assert torch.allclose(projected[3], torch.full((3,), 2 / 3))  # magenta becomes grey
    random = torch.rand(5, 3, 4, 4)
    once = project_out_green_magenta(random)
    assert torch.allclose(project_out_green_magenta(once), once, atol=1e-6)  # a projection
    green_magenta = torch.einsum("nchw,c->nhw", once, torch.tensor([-1.0, 2.0, -1.0]))
    assert green_magenta.abs().max() < 1e-5


@pytest.mark.parametrize("backbone", ["convnet", "resnet18"])
def test_config_composes_with_backbone(make_config, backbone: str) -> None:
    cfg = make_config(["task=context", f"backbone={backbone}", "task.color_drop=true", "task.grayscale_fraction=0.5"])
    task = instantiate(cfg.task, backbone=instantiate(cfg.backbone), num_classes=10, image_size=32)
    assert isinstance(task, ContextTask) and task.chance_accuracy == 1 / 8
    images = torch.rand(4, 3, 32, 32)
    output = task.pretext_step(images, torch.zeros(4, dtype=torch.long))
    output.loss.backward()
    assert torch.isfinite(output.loss) and 0.0 <= float(output.metrics["acc"]) <= 1.0
    assert output.clean_features is None  # the probe runs on whole images
    assert all(p.grad is not None for p in task.head.parameters())
    panel = task.visualize(images)["context_pairs"]
    assert panel.ndim == 3 and panel.shape[0] == 3 and 0.0 <= panel.min() and panel.max() <= 1.0


def test_short_run_beats_chance(make_config) -> None:
    # 1,024 synthetic images (half of them close-ups) x 5 epochs, validation once at the end.
    # Measured val accuracy 0.281, 0.254 (seeds 0, 1) against chance 0.125; asserting 0.2 (1.6x
    # chance) leaves a margin of 0.05 below the worse seed.
    results = run(make_config(["task=context", "trainer.max_epochs=5", "trainer.check_val_every_n_epoch=5",
                               "data.source.num_train=1024",
                                  "eval.protocols.linear=null"]))
    assert results["status"] == "ok" and results["chance_accuracy"] == 0.125
    assert results["pretext"]["val_acc"] > 0.2, results["pretext"]


def test_transformer_backbone_gets_patches_at_the_image_size() -> None:
    task = ContextTask(backbone=TokenBackbone(image_size=32), image_size=32, min_input_size=16)
    output = task.pretext_step(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(output.loss)
