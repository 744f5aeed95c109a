"""Colourisation: Lab conversion, ab bins, soft encoding, rebalancing, decoding, the task end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from skimage.color import rgb2lab

from pretextlab.ops import ab_bins
from pretextlab.ops import lab as lab_conversion
from pretextlab.tasks.base import TaskConfigError
from pretextlab.tasks.colorization import ColorizationTask
from pretextlab.train import run


@pytest.fixture(autouse=True)
def _one_thread():
    """Run this file single-threaded: on the shared 2-core machine, under load from other jobs, the
    short run took 96 s with conftest's 2 threads and 21 s with 1 (same result)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_rgb(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(12, 3, 24, 24, generator=generator)
    rgb[0] = 0.0  # black
    rgb[1] = 1.0  # white
    rgb[2] *= 0.05  # dark colours: the linear toe of sRGB and of the Lab cube root
    rgb[3] = torch.randint(0, 2, (3, 24, 24), generator=generator).float()  # cube corners
    return rgb


# -- Lab ------------------------------------------------------------------------------------------

def test_rgb_to_lab_agrees_with_skimage_within_1e_3():
    rgb = _random_rgb()
    ours = lab_conversion.rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy()
    reference = rgb2lab(rgb.permute(0, 2, 3, 1).double().numpy())
    assert np.abs(ours - reference).max() <= 1e-3


def test_lab_round_trip_restores_rgb():
    rgb = _random_rgb(1)
    assert (lab_conversion.lab_to_rgb(lab_conversion.rgb_to_lab(rgb)) - rgb).abs().max() <= 1e-4


def test_lab_conversion_works_on_single_images_and_stays_float32_under_bf16_autocast():
    rgb = _random_rgb(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = lab_conversion.rgb_to_lab(rgb)
    assert lab.dtype == torch.float32
    assert torch.equal(lab, lab_conversion.rgb_to_lab(rgb))
    assert torch.allclose(lab_conversion.rgb_to_lab(rgb[0 + 5]), lab[5])
    with pytest.raises(ValueError, match="3 channels"):
        lab_conversion.rgb_to_lab(torch.rand(2, 1, 8, 8))


# -- ab bins --------------------------------------------------------------------------------------

def _piecewise_rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """The textbook definition with torch.where on both knees: the reference for the fast path."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    white = torch.tensor(lab_conversion.WHITE_D65).view(3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", torch.tensor(lab_conversion.RGB_TO_XYZ), linear) / white
    f = torch.where(xyz > lab_conversion.LAB_EPSILON, xyz.clamp(min=lab_conversion.LAB_EPSILON) ** (1 / 3), (lab_conversion.LAB_KAPPA * xyz + 16) / 116)
    lightness = 116 * f[:, 1:2] - 16
    return torch.cat([lightness, 500 * (f[:, :1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:])], dim=1)


def test_sliced_batch_conversion_equals_per_image_conversion_and_the_piecewise_definition():
    # 300 images of 32 px exceed one CPU slice, so the batch is converted slice by slice; dark
    # images put values below both knees (sRGB toe, Lab's linear segment).
    rgb = torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    rgb[:20] *= 0.03
    assert len(rgb) * rgb[0].numel() > lab_conversion._CPU_SLICE_VALUES
    lab = lab_conversion.rgb_to_lab(rgb)
    assert torch.allclose(lab, torch.stack([lab_conversion.rgb_to_lab(image) for image in rgb]), atol=1e-4)
    assert (lab - _piecewise_rgb_to_lab(rgb)).abs().max() <= 2e-4


def test_lab_gradient_matches_the_piecewise_definition():
    rgb = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    rgb[0] *= 0.03
    weights = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    fast, reference = rgb.clone().requires_grad_(), rgb.clone().requires_grad_()
    (lab_conversion.rgb_to_lab(fast) * weights).sum().backward()
    (_piecewise_rgb_to_lab(reference) * weights).sum().backward()
    assert fast.grad is not None and reference.grad is not None
    assert (fast.grad - reference.grad).abs().max() <= 1e-4 * reference.grad.abs().max()


def _skimage_reached_cells(samples_per_edge: int) -> set[tuple[int, int]]:
    """Cells (multiples of 10) reached by sRGB colours on the cube's surface, through skimage."""
    steps = np.linspace(0, 1, samples_per_edge)
    u, v = (g.ravel() for g in np.meshgrid(steps, steps, indexing="ij"))
    faces = []
    for axis in range(3):
        for level in (0.0, 1.0):
            channels = [u, v]
            channels.insert(axis, np.full_like(u, level))
            faces.append(np.stack(channels, axis=-1))
    ab = rgb2lab(np.concatenate(faces)[None])[0, :, 1:]
    return set(map(tuple, np.round(ab / 10).astype(int).tolist()))


def test_in_gamut_bins_are_the_cells_srgb_colours_reach():
    centres = ab_bins.in_gamut_ab_bins(10.0)
    count = centres.shape[0]
    assert 240 <= count <= 330, count  # Zhang et al. report 313; this project's criterion gives 262
    assert torch.equal(centres, torch.round(centres / 10) * 10)  # centres on the grid
    kept = set(map(tuple, (centres / 10).long().tolist()))
    assert len(kept) == count
    # sound and complete against an independent computation (skimage, every face at 512²) ...
    assert kept == _skimage_reached_cells(512)
    # ... and complete for every colour of a 64³ RGB cube, inner colours included
    steps = np.linspace(0, 1, 64)
    cube = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(1, -1, 3)
    inner = set(map(tuple, np.round(rgb2lab(cube)[0, :, 1:] / 10).astype(int).tolist()))
    assert inner <= kept


# -- soft encoding, rebalancing, decoding ---------------------------------------------------------

@pytest.fixture(scope="module")
def centres() -> torch.Tensor:
    return ab_bins.in_gamut_ab_bins()


def _random_ab(seed: int = 0) -> torch.Tensor:
    """ab values of real sRGB colours, (B, 2, H, W)."""
    return lab_conversion.rgb_to_lab(_random_rgb(seed))[:, 1:]


def test_soft_encoding_is_a_gaussian_over_the_five_nearest_bins(centres):
    ab = _random_ab()
    indices, weights = ab_bins.soft_encode(ab, centres, neighbours=5, sigma=5.0)
    assert indices.shape == weights.shape == (*ab.shape[:1], *ab.shape[2:], 5)
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-6)
    dense = ab_bins.densify(indices, weights, centres.shape[0])
    assert dense.shape == (ab.shape[0], centres.shape[0], *ab.shape[2:])
    assert ((dense > 0).sum(dim=1) == 5).all()
    # the nearest bin (by brute force) is the first index and carries the largest weight
    assert torch.equal(indices[..., 0], ab_bins.nearest_bin(ab, centres))
    assert torch.equal(dense.argmax(dim=1), indices[..., 0])
    # weights are exp(-d²/2σ²) up to normalisation: check one pixel by hand
    pixel_ab = ab[0, :, 3, 4]
    distances = (centres[indices[0, 3, 4]] - pixel_ab).pow(2).sum(-1)
    expected = torch.exp(-distances / 50.0)
    assert torch.allclose(weights[0, 3, 4], expected / expected.sum(), atol=1e-5)


@pytest.mark.parametrize("neighbours", [1, 5, 9])
def test_windowed_search_finds_the_same_bins_as_the_full_search(centres, neighbours):
    # real colours, plus rows on the gamut's edge and far outside it, where the window holds too
    # few bins and the full search must take over
    generator = torch.Generator().manual_seed(3)
    outside = (torch.rand(2, 2, 8, 8, generator=generator) - 0.5) * 600
    edge = centres[torch.randint(len(centres), (2 * 8 * 8,), generator=generator)].T.reshape(2, 2, 8, 8) + 4.0
    for ab in (_random_ab(), outside, edge):
        full_indices, full_weights = ab_bins.soft_encode(ab, centres, neighbours, sigma=5.0)
        window_indices, window_weights = ab_bins.soft_encode(ab, centres, neighbours, sigma=5.0,
                                                           lattice=ab_bins.bin_lattice(centres, 10.0))
        full_distances = (centres[full_indices] - ab.permute(0, 2, 3, 1)[..., None, :]).pow(2).sum(-1)
        window_distances = (centres[window_indices] - ab.permute(0, 2, 3, 1)[..., None, :]).pow(2).sum(-1)
        assert torch.allclose(window_distances, full_distances, atol=1e-2)  # same neighbours up to ties
        assert torch.allclose(window_weights, full_weights, atol=1e-5)
        closest_two = (centres - ab.permute(0, 2, 3, 1)[..., None, :]).pow(2).sum(-1).topk(2, largest=False).values
        untied = (closest_two[..., 1] - closest_two[..., 0]) > 1e-2
        assert torch.equal(window_indices[..., 0][untied], full_indices[..., 0][untied])


def test_the_task_builds_its_bin_lattice_once(make_config):
    task = _build_task(make_config, [])
    lattice = task._bin_lattice()
    assert task._bin_lattice() is lattice
    assert lattice.table.device == task.bin_centres.device and lattice.grid == task.ab_grid


def test_windowed_search_refuses_centres_off_the_lattice(centres):
    with pytest.raises(ValueError, match="lattice of spacing 7"):
        ab_bins.bin_lattice(centres, 7.0)


def test_rebalancing_weights_have_expectation_one_under_p(centres):
    counts = ab_bins.bin_histogram(ab_bins.nearest_bin(_random_ab(), centres), centres.shape[0])
    p = ab_bins.smooth_distribution(counts / counts.sum(), centres, sigma=5.0)
    assert math.isclose(p.sum().item(), 1.0, rel_tol=1e-5)
    assert (p > 0).all()  # smoothing spreads mass to neighbouring bins; the uniform mix does the rest
    weights = ab_bins.rebalancing_weights(p, uniform_mix=0.5)
    assert math.isclose((p * weights).sum().item(), 1.0, rel_tol=1e-5)
    assert weights[p.argmax()] == weights.min() and weights[p.argmin()] == weights.max()  # rare colours weigh more
    assert torch.allclose(ab_bins.rebalancing_weights(p, uniform_mix=1.0), torch.ones_like(p))


def test_annealed_mean_goes_from_mean_at_t1_to_mode_at_small_t(centres):
    logits = torch.randn(2, centres.shape[0], 3, 3, generator=torch.Generator().manual_seed(0)) * 2
    probabilities = torch.softmax(logits, dim=1)
    mean = torch.einsum("bqhw,qc->bchw", probabilities, centres)
    assert torch.allclose(ab_bins.annealed_mean(logits, centres, 1.0), mean, atol=1e-4)
    mode = centres[logits.argmax(dim=1)].permute(0, 3, 1, 2)
    assert torch.allclose(ab_bins.annealed_mean(logits, centres, 1e-4), mode, atol=1e-2)
    # in between: more saturated than the mean (farther from the origin), on average
    annealed = ab_bins.annealed_mean(logits, centres, 0.38)
    assert annealed.norm(dim=1).mean() > mean.norm(dim=1).mean()


# -- the task -------------------------------------------------------------------------------------

def _build_task(make_config, overrides: list[str]) -> ColorizationTask:
    cfg = make_config(["task=colorization", *overrides])
    task = instantiate(cfg.task, backbone=instantiate(cfg.backbone), num_classes=10,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=32)
    assert isinstance(task, ColorizationTask)
    return task


@pytest.mark.parametrize(("backbone", "head"), [("convnet", "classification"), ("convnet", "regression"),
                                               ("resnet18", "classification")])
def test_task_composes_and_steps_with_each_backbone_and_head(make_config, backbone, head):
    task = _build_task(make_config, [f"backbone={backbone}", f"task.head={head}"])
    assert task.backbone.in_channels == 1
    images, labels = _random_rgb(3)[:4], torch.zeros(4, dtype=torch.long)
    images = torch.nn.functional.interpolate(images, size=32)
    assert task.backbone_input(images).shape == (4, 1, 32, 32)
    assert task.backbone_input(images).abs().max() <= 1.0 + 1e-5
    output = task.pretext_step(images, labels)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    output.loss.backward()
    # the head's last conv starts at zero (the constant prediction), so the backbone learns from step 2
    torch.optim.SGD(task.parameters(), lr=0.1).step()
    task.zero_grad()
    task.pretext_step(images, labels).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in task.backbone.parameters())
    assert any(p.grad.abs().sum() > 0 for p in task.backbone.parameters())
    assert output.clean_features is not None and output.clean_features.shape == (4, task.backbone.feature_dim)
    assert ("acc" in output.metrics) == (head == "classification")
    assert "ab_mse" not in output.metrics  # decoding every pixel is left to validation
    task.eval()
    with torch.no_grad():
        assert "ab_mse" in task.pretext_step(images, labels).metrics
        panel = task.visualize(images)["colorization"]
    assert panel.shape == (3, 3 * 33 + 1, 4 * 33 + 1)  # gray / predicted / original rows of 4


def test_bad_configurations_fail_at_construction():
    from pretextlab.backbones import build_backbone

    def build(in_channels: int = 1, **kwargs) -> ColorizationTask:
        return ColorizationTask(backbone=build_backbone("convnet", in_channels=in_channels),
                                in_channels=in_channels, image_size=32, **kwargs)

    assert build().num_bins == ab_bins.in_gamut_ab_bins().shape[0]
    with pytest.raises(TaskConfigError, match="in_channels must be 1"):
        build(in_channels=3)
    with pytest.raises(TaskConfigError, match="head"):
        build(head="softmax")
    with pytest.raises(TaskConfigError, match="not a stage"):
        build(head_stage="layer9")
    with pytest.raises(TaskConfigError, match="out of range"):
        build(head_stage=4)
    with pytest.raises(TaskConfigError, match="target_downsample"):
        build(target_downsample=64)
    with pytest.raises(TaskConfigError, match="soft_neighbours"):
        build(soft_neighbours=0)


def test_grayscale_images_are_masked_out_of_the_loss(make_config):
    task = _build_task(make_config, [])
    task.eval()  # BN in eval mode: the other images of the batch must not change a pixel's loss
    rgb = torch.nn.functional.interpolate(_random_rgb(4)[4:10], size=32)  # six colourful images
    gray = rgb.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    labels = torch.zeros(12, dtype=torch.long)
    with torch.no_grad():
        colour_only = task.pretext_step(rgb, labels[:6])
        mixed = task.pretext_step(torch.cat([rgb[:3], gray, rgb[3:]]), labels)
        gray_only = task.pretext_step(gray, labels[:6])
    assert torch.allclose(mixed.loss, colour_only.loss, rtol=1e-5)
    assert torch.allclose(mixed.metrics["ab_mse"], colour_only.metrics["ab_mse"], rtol=1e-5)
    assert gray_only.loss.item() == 0.0


def test_bf16_autocast_step_matches_float32(make_config):
    task = _build_task(make_config, [])
    task.eval()
    images = torch.nn.functional.interpolate(_random_rgb(5)[4:12], size=32)
    labels = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        full = task.pretext_step(images, labels).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = task.pretext_step(images, labels).loss
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert abs(half.item() - full.item()) < 0.05 * abs(full.item())


def test_prior_from_training_images_lands_in_the_state_dict(make_config):
    from pretextlab.data.synthetic import render_scenes

    task = _build_task(make_config, ["task.prior_images=48"])
    images, _ = render_scenes(np.arange(64), image_size=32)
    gray = images.float().mean(dim=1, keepdim=True).round().to(torch.uint8).expand(-1, 3, -1, -1)
    task.fit_prior(gray)  # nothing to learn from: stays uniform
    assert not bool(task.prior_fitted) and torch.equal(task.bin_weights, torch.ones_like(task.bin_weights))
    task.fit_prior(images)
    assert bool(task.prior_fitted)
    assert math.isclose(task.prior.sum().item(), 1.0, rel_tol=1e-5)
    assert math.isclose((task.prior * task.bin_weights).sum().item(), 1.0, rel_tol=1e-5)
    state = task.state_dict()
    for name in ("bin_centres", "prior", "bin_weights", "ab_mean", "prior_fitted"):
        assert name in state


@pytest.mark.parametrize("head", ["classification", pytest.param("regression", marks=pytest.mark.slow)])
def test_short_synthetic_run_beats_the_mean_colour_baseline(make_config, tmp_path, head):
    # 1,024 images × 5 epochs (80 steps) of the scenes with close-ups: measured val ab error /
    # mean-colour baseline 0.42 and accuracy 0.19 against 0.083 for always predicting the most
    # frequent bin (classification, seed 0). (Before close-ups were added, 512 × 4 gave 0.50-0.55.)
    results = run(make_config(["task=colorization", f"task.head={head}", "logger=csv",
                               "data.source.num_train=1024", "trainer.max_epochs=5"]))
    assert results["status"] == "ok"
    assert len(list((tmp_path / "run").rglob("panels/colorization_epoch*.png"))) == 5  # one per val epoch
    pretext = results["pretext"]
    assert pretext["val_ab_mse"] < 0.7 * pretext["val_ab_mse_mean_baseline"], pretext
    if head == "classification":
        assert pretext["val_acc"] > 2 * pretext["val_acc_mode_baseline"], pretext


def test_sparse_soft_cross_entropy_matches_log_softmax_gather_in_value_and_gradient():
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 3, 3, 20, generator=generator) * 5
    indices = torch.stack([torch.randperm(20, generator=generator)[:5] for _ in range(36)]).view(4, 3, 3, 5)
    weights = torch.softmax(torch.randn(4, 3, 3, 5, generator=generator), dim=-1)
    upstream = torch.randn(4, 3, 3, generator=generator)
    ours_input, reference_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss, argmax = ab_bins.sparse_soft_cross_entropy(ours_input, indices, weights)
    reference = -(weights * torch.log_softmax(reference_input, dim=-1).gather(-1, indices)).sum(-1)
    assert torch.allclose(loss, reference, atol=1e-5)
    assert torch.equal(argmax, logits.argmax(dim=-1))
    (loss * upstream).sum().backward()
    (reference * upstream).sum().backward()
    assert ours_input.grad is not None and reference_input.grad is not None
    assert torch.allclose(ours_input.grad, reference_input.grad, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        ab_bins.sparse_soft_cross_entropy(logits, indices[..., :4], weights)


# -- colorization's floor: a random-init backbone of one channel, fed the same L --------------------
def test_a_one_channel_random_init_reads_the_l_channel_colorization_reads(make_config):
    """`task=none task.in_channels=1` is colorization's random-init floor: the same input (scaled L),
    declared as such in task_info (so the table pairs the two rows and evaluate/export prepare L)."""
    from pretextlab.tasks.none import RandomInitTask

    cfg = make_config(["task=none", "task.in_channels=1"])
    floor = instantiate(cfg.task, backbone=instantiate(cfg.backbone))
    colorization_cfg = make_config(["task=colorization"])
    colorization = instantiate(colorization_cfg.task, backbone=instantiate(colorization_cfg.backbone))
    images = torch.rand(4, 3, 32, 32)
    assert floor.backbone.in_channels == 1
    assert torch.equal(floor.backbone_input(images), colorization.backbone_input(images))
    assert torch.equal(floor.encoder()(images), floor.backbone(lab_conversion.lightness_input(images)))
    info = RandomInitTask.task_info({"name": "none", "in_channels": 1})
    assert info["input_kind"] == "lab_l" == ColorizationTask.task_info({"name": "colorization"})["input_kind"]
    assert info["label"] == "random init, L channel"
    assert RandomInitTask.task_info({"name": "none", "in_channels": 3})["input_kind"] == "rgb_normalized"


@pytest.mark.parametrize("overrides, message", [
    (["task=rotation", "task.in_channels=1"],
     "task.in_channels=1 is not allowed: task=rotation feeds RGB images (rgb_normalized), so task.in_channels must be 3"),
    (["task=colorization", "task.in_channels=3"],
     "task.in_channels=3 is not allowed: task=colorization feeds the L channel of CIE Lab (lab_l), so "
     "task.in_channels must be 1"),
])
def test_a_task_fed_the_wrong_number_of_channels_is_refused_before_anything_is_built(overrides, message):
    from pretextlab.config import ConfigError, compose_train
    from pretextlab.validation import validate_config

    with pytest.raises(ConfigError) as refused:
        validate_config(compose_train(overrides))
    assert message in str(refused.value)
    validate_config(compose_train(["task=none", "task.in_channels=1"]))  # random init takes either
