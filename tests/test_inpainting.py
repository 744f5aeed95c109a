"""Context encoder: masks, overlap border, losses, both optimisers, backbones, and a short run."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import TokenBackbone
from pretextlab.config import ConfigError
from pretextlab.validation import validate_config
from pretextlab.ops.masks import (
    MASK_FRACTION_ALLOWED,
    MASK_KINDS,
    central_mask,
    default_border_width,
    make_masks,
    overlap_border,
    random_block_mask,
    random_region_mask,
)
from pretextlab.tasks.base import TaskConfigError, backbone_problem
from pretextlab.tasks.inpainting import InpaintingBatch, InpaintingTask
from pretextlab.train import run


# -- masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.4])
def test_masks_cover_the_stated_fraction(size: int, fraction: float) -> None:
    batch, pixels = 64, size * size
    generator = torch.Generator().manual_seed(0)

    # Central: one square whose side is rounded to whole pixels, so the error is at most that rounding.
    central = central_mask(batch, size, size, fraction)
    side = round((fraction * pixels) ** 0.5)
    assert torch.equal(central.flatten(1).sum(1), torch.full((batch,), side * side))
    assert abs(side * side / pixels - fraction) <= ((fraction * pixels) ** 0.5 + 0.25) / pixels
    rows, cols = central[0, 0].nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side  # one square
    assert abs((rows.min() + rows.max()) / 2 - (size - 1) / 2) <= 0.5  # centred

    # Random regions: each image hides exactly round(fraction * H * W) pixels (a per-image rank).
    regions = random_region_mask(batch, size, size, fraction, generator=generator)
    assert torch.equal(regions.flatten(1).sum(1), torch.full((batch,), round(fraction * pixels)))

    # Random blocks: the longest prefix of blocks within the budget, so coverage lies in
    # (fraction - one block, fraction]: the next block would have passed the budget.
    block = max(1, round(size / 5))
    blocks = random_block_mask(batch, size, size, fraction, generator=generator)
    coverage = blocks.flatten(1).float().mean(1)
    assert coverage.max() <= fraction
    assert coverage.min() > fraction - block * block / pixels


def test_masks_shapes_dtypes_and_variety() -> None:
    generator = torch.Generator().manual_seed(0)
    for kind in MASK_KINDS:
        masks = make_masks(kind, 8, 32, 48, 0.25, generator=generator)
        assert masks.shape == (8, 1, 32, 48) and masks.dtype == torch.bool
        distinct = len({tuple(m.flatten().tolist()) for m in masks})
        assert distinct == (1 if kind == "central" else 8)  # random kinds differ per image
    with pytest.raises(ValueError, match="unknown mask kind 'square'"):
        make_masks("square", 2, 32, 32)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        central_mask(2, 32, 32, fraction=1.0)


def test_random_blocks_are_squares_of_the_block_size() -> None:
    # Every hidden pixel lies inside some fully hidden block_size x block_size square.
    masks = random_block_mask(16, 32, 32, 0.25, block_size=6, generator=torch.Generator().manual_seed(3))
    fully_hidden = torch.nn.functional.avg_pool2d(masks.float(), 6, stride=1) == 1.0  # top-left corners
    covered = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(fully_hidden.float(), (5, 5, 5, 5)), 6, stride=1) > 0
    assert torch.equal(covered, masks)


@pytest.mark.parametrize("block_size", [6, 2])  # 2 px: 260 candidates, several float64 chunks
def test_random_blocks_match_a_naive_prefix_reference(block_size: int) -> None:
    batch, size, fraction = 8, 32, 0.25
    masks = random_block_mask(batch, size, size, fraction, block_size, generator=torch.Generator().manual_seed(5))
    # Same draws (same generator, same order: all tops, then all lefts), added one block at a time.
    generator = torch.Generator().manual_seed(5)
    candidates = 4 * -(-(fraction * size * size) // block_size**2) + 4
    top = torch.randint(0, size - block_size + 1, (batch, int(candidates)), generator=generator)
    left = torch.randint(0, size - block_size + 1, (batch, int(candidates)), generator=generator)
    for image in range(batch):
        reference = torch.zeros(size, size, dtype=torch.bool)
        for y, x in zip(top[image].tolist(), left[image].tolist(), strict=True):
            trial = reference.clone()
            trial[y : y + block_size, x : x + block_size] = True
            if trial.sum() > fraction * size * size:
                break
            reference = trial
        assert torch.equal(masks[image, 0], reference)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_overlap_border_is_outside_and_adjacent(width: int) -> None:
    holes = torch.cat([make_masks(kind, 4, 32, 32, 0.25, generator=torch.Generator().manual_seed(1))
                       for kind in MASK_KINDS])
    border = overlap_border(holes, width)
    assert border.dtype == torch.bool and border.shape == holes.shape
    assert not (border & holes).any()  # outside the hole
    # Naive reference: a pixel is border iff it is not hidden and some hidden pixel lies within
    # `width` pixels along both axes (shifts of the hole, clipped at the image edge).
    padded = torch.nn.functional.pad(holes, (width, width, width, width))
    near = torch.zeros_like(holes)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            near |= padded[:, :, dy : dy + 32, dx : dx + 32]
    assert torch.equal(border, near & ~holes)
    # For the central 16 px square (images 0-3) the ring is exactly (16 + 2w)^2 - 16^2 pixels.
    assert int(border[0].sum()) == (16 + 2 * width) ** 2 - 16**2
    assert default_border_width(128) == 4 and default_border_width(32) == 1


# -- the task ---------------------------------------------------------------------------------
def make_task(backbone: str = "convnet", **kwargs) -> InpaintingTask:
    from pretextlab.backbones import build_backbone

    extra = {"cifar_stem": True} if backbone.startswith("resnet") else {}
    return InpaintingTask(backbone=build_backbone(backbone, **extra), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
                          optimizer=lambda groups: torch.optim.SGD(groups, lr=0.05), **kwargs)


def test_masked_input_is_filled_with_the_dataset_mean() -> None:
    task = make_task(mask="random_regions")
    images = torch.rand(6, 3, 32, 32)
    generated = task.generate(images)
    assert torch.equal(generated.target, task.backbone_input(images))
    assert (generated.masked_input[generated.hole.expand(-1, 3, -1, -1)] == 0).all()  # 0 = the mean colour
    visible = ~generated.hole.expand(-1, 3, -1, -1)
    assert torch.equal(generated.masked_input[visible], generated.target[visible])
    assert generated.prediction.shape == images.shape
    panel = task.visualize(images)["inpainting"]
    assert panel.shape[0] == 3 and panel.min() >= 0 and panel.max() <= 1


def test_loss_looks_at_hole_and_weighted_border_only() -> None:
    task = make_task(adversarial=False, border_weight=10.0)
    target = torch.zeros(1, 3, 8, 8)
    hole = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    hole[..., 3:5, 3:5] = True  # 4 hidden pixels
    border = overlap_border(hole, 1)  # 16 - 4 = 12 ring pixels
    prediction = torch.zeros(1, 3, 8, 8)
    prediction[..., 0, 0] = 5.0  # far from the hole: must not count
    stage_map = torch.zeros(1, task.backbone.stage_dims[-1], 1, 1)  # the losses do not read it
    batch = InpaintingBatch(target, target.masked_fill(hole, 0), hole, border, prediction, stage_map)
    assert float(task.generator_losses(batch).loss) == 0.0
    prediction[..., 3, 3] = 1.0  # one hidden pixel off by 1 in every channel
    prediction[..., 2, 2] = 1.0  # one border pixel off by 1 in every channel
    output = task.generator_losses(batch)
    weights = 4 * 1.0 + 12 * 10.0
    assert float(output.loss) == pytest.approx((1.0 + 10.0) / weights)
    assert float(output.metrics["masked_mse"]) == pytest.approx(1 / 4)
    assert float(output.metrics["baseline_mse"]) == 0.0


def test_losses_stay_float32_and_finite_under_bf16_autocast() -> None:
    task = make_task()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = task.pretext_step(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    for value in (output.loss, *output.terms.values(), *output.metrics.values()):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    assert set(output.terms) == {"reconstruction", "adversarial"}


def test_transformer_backbone_is_refused() -> None:
    with pytest.raises(TaskConfigError, match="InpaintingTask needs a convolutional backbone"):
        InpaintingTask(backbone=TokenBackbone())


def test_bad_parameters_fail_at_construction() -> None:
    with pytest.raises(TaskConfigError, match="task.mask='square'"):
        make_task(mask="square")
    with pytest.raises(TaskConfigError, match="task.mask_fraction"):
        make_task(mask_fraction=0.0)
    with pytest.raises(TaskConfigError, match="task.encoder_stage='layer9'"):
        make_task(encoder_stage="layer9")


@pytest.mark.parametrize("fraction", [0.0, 1, 1.5, -0.25])
def test_mask_fraction_has_one_rule_for_config_task_and_masks(make_config, fraction: float) -> None:
    # The same words wherever the key is checked: config validation (before anything is built, also
    # for a multitask member), the task's constructor, and the mask functions themselves.
    expected = f"is not allowed: must be {MASK_FRACTION_ALLOWED}"
    with pytest.raises(TaskConfigError) as caught:
        make_task(mask_fraction=fraction)
    assert str(caught.value) == f"task.mask_fraction={fraction!r} {expected}"
    for key in ("task.mask_fraction", "task.members.inpainting.task.mask_fraction"):
        task = "task=multitask" if "members" in key else "task=inpainting"
        with pytest.raises(ConfigError) as refused:
            validate_config(make_config([task, f"{key}={fraction}"]))
        assert f"{key}={fraction!r} {expected}" in refused.value.problems
    with pytest.raises(ValueError, match=f"fraction={fraction!r} is not allowed"):
        make_masks("central", 1, 32, 32, fraction)
    make_task(mask_fraction=0.5)  # inside (0, 1): accepted


def test_backbone_requirement_has_one_wording_for_config_and_task(make_config) -> None:
    cfg = make_config(["task=inpainting", "backbone=vit_tiny"])
    backbone = instantiate(cfg.backbone)
    phrase = backbone_problem(InpaintingTask.requires, backbone)
    assert phrase is not None and "choose backbone=convnet" in phrase
    assert backbone_problem("any", backbone) is None and backbone_problem(InpaintingTask.requires, make_task().backbone) is None
    with pytest.raises(TaskConfigError) as caught:
        InpaintingTask(backbone=backbone)
    assert str(caught.value) == f"InpaintingTask {phrase}"
    with pytest.raises(ConfigError) as refused:
        validate_config(cfg)
    assert f"backbone=vit is not allowed with task=inpainting: the task {phrase}" in refused.value.problems


@pytest.mark.parametrize("backbone", ["convnet", "resnet18"])
def test_config_composes_with_backbone(make_config, backbone: str) -> None:
    cfg = make_config(["task=inpainting", f"backbone={backbone}", "task.mask=central"])
    task = instantiate(cfg.task, backbone=instantiate(cfg.backbone), num_classes=10, image_size=32)
    assert isinstance(task, InpaintingTask) and task.chance_accuracy is None
    output = task.pretext_step(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(p.grad is not None for p in task.decoder.parameters())


def fit_briefly(make_config, overrides: list[str], batches: int = 2,
                callbacks: list[L.Callback] | None = None) -> tuple[InpaintingTask, InpaintingTask]:
    """Train a tiny task for a couple of batches; return it and a copy taken before training."""
    cfg = make_config(["task=inpainting", *overrides])
    L.seed_everything(0)
    datamodule = instantiate(cfg.data)
    task = instantiate(cfg.task, backbone=instantiate(cfg.backbone), num_classes=datamodule.num_classes,
                       mean=datamodule.mean, std=datamodule.std, image_size=datamodule.image_size)
    before = copy.deepcopy(task)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks)
    trainer.fit(task, datamodule=datamodule)
    return task, before


def changed(module: torch.nn.Module, reference: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(module.parameters(), reference.parameters(), strict=True))


def test_both_optimisers_step(make_config) -> None:
    task, before = fit_briefly(make_config, [])
    generator_optimizer, discriminator_optimizer = task.optimizers()
    discriminator_params = set(task.discriminator.parameters())
    generator_params = {p for group in generator_optimizer.param_groups for p in group["params"]}
    assert not generator_params & discriminator_params  # the discriminator is not in G's groups
    assert task.probe.weight in generator_params  # the probe is (its own group)
    assert set(discriminator_optimizer.param_groups[0]["params"]) == discriminator_params
    assert isinstance(discriminator_optimizer.optimizer, torch.optim.Adam)
    assert discriminator_optimizer.param_groups[0]["lr"] == 2e-4
    assert discriminator_optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    assert changed(task.discriminator, before.discriminator)
    assert changed(task.backbone, before.backbone) and changed(task.decoder, before.decoder)
    assert changed(task.probe, before.probe)


def test_adversarial_off_trains_without_a_discriminator(make_config) -> None:
    task, before = fit_briefly(make_config, ["task.adversarial=false"])
    assert task.discriminator is None
    assert task.extra_optimizers() == [] and task.automatic_optimization  # the base task's plain loop
    assert not isinstance(task.optimizers(), list)  # one optimiser
    assert changed(task.backbone, before.backbone) and changed(task.decoder, before.decoder)
    output = task.pretext_step(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    assert set(output.terms) == {"reconstruction"} and output.loss is output.terms["reconstruction"]


class BatchRecorder(L.Callback):
    """Each training batch as the step sees it (augmented, on the device) and the RNG state before it."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        images, labels = batch
        self.batches.append((images.clone(), labels.clone(), torch.get_rng_state()))


@pytest.mark.parametrize("adversarial", [True, False])
def test_training_follows_the_explicit_algorithm(make_config, adversarial: bool) -> None:
    # The context encoder's loop written out by hand: per batch, one step of task.optimizer (and its
    # scheduler) on the generator + probe loss with the discriminator frozen, then one Adam step of the
    # discriminator with the generator frozen (without a discriminator: the first step alone, as for
    # any task). The trained weights and BN statistics must be exactly those. (This test passed
    # unchanged against the task's own manual loop before the base task took the loop over.)
    batches = 3
    recorder = BatchRecorder()
    overrides = [f"task.adversarial={str(adversarial).lower()}"]
    cfg = make_config(["task=inpainting", *overrides])
    task, reference = fit_briefly(make_config, overrides, batches=batches, callbacks=[recorder])
    assert len(recorder.batches) == batches
    assert task.automatic_optimization is not adversarial

    discriminator_params = list(reference.discriminator.parameters()) if adversarial else []
    probe_params = list(reference.probe.parameters())
    held_apart = set(discriminator_params) | set(probe_params)
    generator_params = [p for p in reference.parameters() if p not in held_apart]
    generator_optimizer = instantiate(cfg.task.optimizer)([
        {"params": generator_params},
        {"params": probe_params, "lr": cfg.task.probe_lr, "weight_decay": 0.0}])
    scheduler = instantiate(cfg.task.scheduler)(generator_optimizer, total_steps=batches)
    discriminator_optimizer = torch.optim.Adam(discriminator_params, lr=cfg.task.discriminator_lr,
                                               betas=(cfg.task.discriminator_beta1, 0.999)) if adversarial else None
    reference.train()
    for images, labels, rng_state in recorder.batches:
        torch.set_rng_state(rng_state)  # the same masks
        for p in discriminator_params:
            p.requires_grad_(False)
        generated = reference.generate(images)
        output = reference.generator_losses(generated)
        labelled = labels >= 0
        probe_logits = reference.probe(output.pretext_features.detach().float())
        assert labelled.any()  # the synthetic scenes are labelled
        probe_loss = torch.nn.functional.cross_entropy(probe_logits[labelled], labels[labelled])
        generator_optimizer.zero_grad()
        (output.loss + probe_loss).backward()
        generator_optimizer.step()
        scheduler.step()
        if discriminator_optimizer is None:
            continue
        for p in discriminator_params:
            p.requires_grad_(True)
        for p in generator_params:
            p.requires_grad_(False)
        discriminator_loss = reference.discriminator_loss(generated)
        discriminator_optimizer.zero_grad()
        discriminator_loss.backward()
        discriminator_optimizer.step()
        for p in generator_params:
            p.requires_grad_(True)

    trained, expected = task.state_dict(), reference.state_dict()
    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("rule", ["linear", "sqrt"])
def test_lr_scaling_applies_to_the_generator_and_the_discriminator(make_config, rule: str) -> None:
    overrides = [f"task.lr_scaling={rule}", "task.base_batch_size=256"]
    cfg = make_config(["task=inpainting", *overrides])
    assert cfg.data.batch_size != cfg.task.base_batch_size  # one process: the global batch is data.batch_size
    ratio = cfg.data.batch_size / cfg.task.base_batch_size
    factor = ratio if rule == "linear" else ratio**0.5
    task, _ = fit_briefly(make_config, overrides, batches=1)
    generator_optimizer, discriminator_optimizer = task.optimizers()
    # The generator's scheduler starts from the scaled lrs (its base_lrs); the discriminator has none.
    generator_scheduler = task.lr_schedulers()
    assert generator_scheduler.optimizer is generator_optimizer.optimizer
    assert generator_scheduler.base_lrs == pytest.approx([cfg.task.optimizer.lr * factor, cfg.task.probe_lr * factor])
    assert discriminator_optimizer.param_groups[0]["lr"] == pytest.approx(cfg.task.discriminator_lr * factor)


def test_short_run_beats_the_mean_prediction(make_config) -> None:
    # 256 synthetic images x 6 epochs (24 generator + 24 discriminator steps of 64 images), no linear
    # eval, validation once at the end. Measured val masked MSE / mean-prediction masked MSE:
    # 0.403, 0.399, 0.411 (seeds 0, 1, 2); asserting < 0.6 leaves a margin of 0.19 above the worst seed.
    results = run(make_config(["task=inpainting", "trainer.max_epochs=6", "trainer.check_val_every_n_epoch=6",
                                  "eval.protocols.linear=null"]))
    assert results["status"] == "ok" and results["chance_accuracy"] is None
    pretext = results["pretext"]
    assert pretext["val_masked_mse"] < 0.6 * pretext["val_baseline_mse"], pretext
