import pytest
import torch

from pretextlab.backbones import build_backbone
from pretextlab.config import ConfigError
from pretextlab.ops.tokens import (
    denormalize_patches,
    masked_patch_mse,
    mean_prediction_mse,
    normalize_patches,
    num_kept_tokens,
    patchify,
    random_masking,
    restore_order,
    unpatchify,
)
from pretextlab.tasks.base import TaskConfigError
from pretextlab.tasks.mae import MAETask
from pretextlab.train import run


# -- ops/tokens ---------------------------------------------------------------------------------
@pytest.mark.parametrize("channels, height, width, patch", [(3, 32, 32, 4), (1, 8, 12, 2), (3, 6, 6, 3)])
def test_patchify_and_unpatchify_are_exact_inverses(channels, height, width, patch):
    images = torch.randn(2, channels, height, width)
    patches = patchify(images, patch)
    rows, cols = height // patch, width // patch
    assert patches.shape == (2, rows * cols, patch * patch * channels)
    assert torch.equal(unpatchify(patches, patch, channels, (rows, cols)), images)
    # Patch k is the k-th cell in row-major order, its pixels row by row, channels innermost.
    k = cols + 1  # row 1, column 1
    cell = images[1, :, patch:2 * patch, patch:2 * patch]
    assert torch.equal(patches[1, k], cell.permute(1, 2, 0).reshape(-1))


def test_patchify_rejects_sizes_that_do_not_split():
    with pytest.raises(ValueError, match="does not split"):
        patchify(torch.zeros(1, 3, 10, 10), 4)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(torch.zeros(1, 6, 12), 2, 3)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_masking_keeps_the_right_count_per_sample_and_the_mask_matches(ratio):
    generator = torch.Generator().manual_seed(0)
    batch, count, dim = 16, 64, 5
    tokens = torch.randn(batch, count, dim)
    result = random_masking(tokens, ratio, generator=generator)
    keep = num_kept_tokens(count, ratio)
    assert keep == int(count * (1 - ratio))
    assert result.kept.shape == (batch, keep, dim)
    assert result.mask.shape == (batch, count)
    assert torch.equal(result.mask.sum(dim=1), torch.full((batch,), float(count - keep)))
    for b in range(batch):  # the kept positions are exactly the unmasked ones, and hold those tokens
        kept_positions = set(result.ids_keep[b].tolist())
        assert kept_positions == set(torch.nonzero(result.mask[b] == 0).flatten().tolist())
        assert torch.equal(result.kept[b], tokens[b, result.ids_keep[b]])
    # Each sample draws its own subset.
    assert len({tuple(sorted(row.tolist())) for row in result.ids_keep}) > batch // 2
    # Restoring puts kept tokens back in place and the filler everywhere else.
    filler = torch.full((dim,), 99.0)
    restored = restore_order(result.kept, filler, result.ids_restore)
    visible = result.mask.unsqueeze(-1) == 0
    assert torch.equal(torch.where(visible, restored, tokens), tokens)
    assert torch.all(restored[~visible.expand_as(restored)] == 99.0)


def test_masking_refuses_a_ratio_that_keeps_nothing():
    with pytest.raises(ValueError, match="no visible token"):
        random_masking(torch.zeros(1, 4, 2), 0.9)


def test_patch_normalisation_and_losses():
    patches = torch.randn(3, 10, 12) * 5 + 2
    normalised = normalize_patches(patches)
    assert torch.allclose(normalised.mean(dim=-1), torch.zeros(3, 10), atol=1e-5)
    assert torch.allclose(normalised.var(dim=-1), torch.ones(3, 10), atol=1e-4)
    assert torch.allclose(denormalize_patches(normalised, patches), patches, atol=1e-4)
    mask = torch.zeros(3, 10)
    mask[:, :4] = 1
    wrong_where_visible = patches.clone()
    wrong_where_visible[:, 4:] += 100.0
    assert masked_patch_mse(wrong_where_visible, patches, mask) == 0  # visible patches never count
    assert masked_patch_mse(patches + 1.0, patches, mask) == pytest.approx(1.0)
    masked = patches[:, :4].reshape(-1, 12)
    expected = (masked - masked.mean(dim=0)).pow(2).mean()
    assert mean_prediction_mse(patches, mask) == pytest.approx(expected.item(), rel=1e-5)


# -- the task -----------------------------------------------------------------------------------
def small_mae(**overrides):
    backbone = build_backbone("vit", image_size=32, patch_size=4, dim=32, depth=2, heads=4)
    settings = {"backbone": backbone, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2,
                "online_probe": False}
    settings.update(overrides)
    return MAETask(**settings)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_mask_ratio_outside_the_open_interval_is_refused(ratio):
    with pytest.raises(TaskConfigError, match="mask_ratio"):
        small_mae(mask_ratio=ratio)


def test_encoder_sees_only_the_visible_tokens():
    task = small_mae(mask_ratio=0.75)
    seen = []
    original = task.backbone.encode_tokens
    task.backbone.encode_tokens = lambda tokens: seen.append(tokens.shape) or original(tokens)
    output = task.pretext_step(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    assert seen == [torch.Size([4, 16, 32])]  # 64 patches, 25 % visible
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert set(output.metrics) == {"mse", "baseline_mse"}
    output.loss.backward()
    assert task.decoder.mask_token.grad is not None and task.backbone.cls_token.grad is not None


def test_panel_shows_masked_input_reconstruction_and_original():
    task = small_mae().eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        panel = task.visualize(images)["mae"]
    assert panel.shape == (3, 3 * 33 + 1, 3 * 33 + 1) and 0 <= panel.min() and panel.max() <= 1
    third_row = panel[:, 2 * 33 + 1:3 * 33, 1:33]  # row 3, first image: the original
    assert torch.allclose(third_row, images[0], atol=1e-6)


def test_mae_with_a_convnet_is_refused_with_the_fix(make_config):
    with pytest.raises(ConfigError, match="vit_tiny"):
        run(make_config(["task=mae", "backbone=convnet"]))
    with pytest.raises(TaskConfigError, match="backbone=vit_tiny"):
        MAETask(backbone=build_backbone("convnet"))


def test_short_mae_run_reconstructs_well_below_the_mean_prediction(make_config):
    # A smaller ViT than vit_tiny and a higher lr, so that 48 steps suffice on CPU; validation only
    # after the last epoch. Measured: val masked MSE 0.68 (seed 0) and 0.58 (seed 1) against 0.97
    # for the mean prediction; the same settings in a plain loop ended at 0.56-0.65 for seeds 0-2.
    results = run(make_config([
        "task=mae", "backbone=vit_tiny", "backbone.dim=32", "backbone.depth=2",
        "task.decoder_dim=32", "task.decoder_depth=1", "task.optimizer.lr=5e-3",
        "data.batch_size=32", "trainer.max_epochs=6", "trainer.check_val_every_n_epoch=6",
        "task.online_probe=false",
    ]))
    pretext = results["pretext"]
    assert results["status"] == "ok"
    assert pretext["val_mse"] < 0.8 * pretext["val_baseline_mse"], pretext
    assert pretext["train_mse"] < pretext["train_baseline_mse"], pretext
    assert set(results["eval"]["linear"]["per_stage"]) == {"block1", "block2"}
