"""The layer-wise probe's pooling map, BatchNorm re-estimation, RotNet's CIFAR classifiers and the
fine-tuning learning-rate search (the protocol parts that are not the linear probe's own tests)."""

from __future__ import annotations

import copy

import pytest
import torch

from pretextlab.backbones import build_backbone
from pretextlab.backbones.pooling import PoolingError, StagePooling, grid_for_dim
from pretextlab.config import ConfigError
from pretextlab.validation import validate_config
from pretextlab.evaluation import FineTune, RotNetClassifiers, evaluate
from pretextlab.evaluation.batchnorm import batchnorm_layers, recalibrate_batchnorm
from pretextlab.evaluation.linear import LinearProbe
from tests.test_evaluation import TinyData, colour_split, encoder_for


# -- the pooling map --------------------------------------------------------------------------------
def test_the_rule_picks_the_largest_dividing_grid_under_the_target():
    assert grid_for_dim(16, 16, 16, 2048) == 8      # 16 * 8^2 = 1,024 (16^2 would be 4,096)
    assert grid_for_dim(128, 4, 4, 2048) == 4       # the whole 4x4 map: 2,048
    assert grid_for_dim(512, 4, 4, 2048) == 2       # 512 * 2^2 = 2,048: exactly the target
    assert grid_for_dim(1024, 4, 4, 2048) == 1      # even 2x2 is over: global average
    assert grid_for_dim(3, 6, 6, 30) == 3           # 3 divides 6, 3 * 9 = 27 <= 30 (5 does not divide 6)
    assert grid_for_dim(3, 7, 7, 10_000) == 7


def test_width16_convnet_gives_every_stage_at_least_a_thousand_features():
    backbone = build_backbone("convnet", width=16)
    features = backbone.forward_stages(torch.rand(2, 3, 32, 32), None, StagePooling())
    assert {s: f.shape[1] for s, f in features.items()} == {"block1": 1024, "block2": 2048, "block3": 1024,
                                                            "block4": 2048}
    # The grid is a plain average pool: the mean of a stage's cells is its global average.
    whole = backbone.forward_stages(torch.rand(2, 3, 32, 32).fill_(0.3), ["block1"], 1)["block1"]
    cells = backbone.forward_stages(torch.rand(2, 3, 32, 32).fill_(0.3), ["block1"], StagePooling())["block1"]
    torch.testing.assert_close(cells.view(2, 16, 64).mean(2), whole)


def test_per_stage_grids_override_the_rule_and_a_grid_larger_than_its_map_is_refused():
    backbone = build_backbone("convnet", width=16)
    images = torch.rand(2, 3, 32, 32)
    features = backbone.forward_stages(images, None, StagePooling(grids={"block1": 2, "block4": 1}))
    assert [f.shape[1] for f in features.values()] == [16 * 4, 2048, 1024, 128]
    with pytest.raises(PoolingError, match=r"eval.pool_grids.block3=8 .* block3 is a 4x4 map"):
        backbone.forward_stages(images, None, StagePooling(grids={"block3": 8}))
    with pytest.raises(PoolingError, match="eval.pool_size=8"):
        backbone.forward_stages(images, None, StagePooling(size=8))


def test_a_grid_too_large_for_its_stage_is_a_config_error_before_training(make_config):
    with pytest.raises(ConfigError, match=r"eval.pool_grids.block3=8 asks for a 8x8 grid.*use a grid <= 4"):
        validate_config(make_config(["+eval.pool_grids.block3=8"]))
    with pytest.raises(ConfigError, match=r"eval.pool_grids names stage\(s\) \['layer9'\]"):
        validate_config(make_config(["+eval.pool_grids.layer9=2"]))
    validate_config(make_config(["+eval.pool_grids.block3=4"]))  # the whole map is fine


def test_vit_stages_keep_their_token_pooling():
    vit = pytest.importorskip("pretextlab.backbones.vit")
    model = vit.VisionTransformer(image_size=16, patch_size=4, dim=32, depth=2, heads=2)
    features = model.forward_stages(torch.rand(2, 3, 16, 16), None, StagePooling(target_dim=10_000))
    assert [f.shape[1] for f in features.values()] == [32, 32]


def test_results_record_each_stages_feature_dimension():
    encoder = encoder_for("convnet", width=4, num_blocks=2)
    data = TinyData(colour_split(60, 0), colour_split(30, 1), 3)
    probe = LinearProbe(epochs=2, lrs=[0.01], weight_decays=[0.0], batch_size=32)
    result = evaluate(encoder, data, {"linear": probe}, "all", StagePooling(target_dim=64))
    # 16 px colour images: block1 is 4 ch x 16^2 (grid 4: 64), block2 8 ch x 8^2 (grid 2: 32).
    assert {s: r["dim"] for s, r in result["linear"]["per_stage"].items()} == {"block1": 64, "block2": 32}


# -- BatchNorm re-estimation ------------------------------------------------------------------------
class FeatureSpy:
    """A feature protocol that reports the mean of the features it was given."""

    name = "spy"

    def run(self, train, test, num_classes):
        return {f"{stage}_mean": float(features.mean()) for stage, features in train.features.items()}


def test_batchnorm_statistics_are_re_estimated_from_training_images_only():
    encoder = encoder_for("convnet", width=4, num_blocks=2)
    weights = {k: v.clone() for k, v in encoder.state_dict().items() if "running" not in k and "num_batches" not in k}
    data = TinyData(colour_split(64, 0), colour_split(30, 1), 3, batch_size=16)
    first = batchnorm_layers(encoder)[0]
    assert torch.equal(first.running_mean, torch.zeros(4))  # untrained: BN is an identity in eval mode
    seen = recalibrate_batchnorm(encoder, data.eval_dataloader("train"), lambda x: data.prepare_images(x, False), 48)
    assert seen == 48
    images = data.prepare_images(data.split("train").images[:48], False) - 0.5
    conv_out = encoder.backbone.blocks[0][0][0](images)
    torch.testing.assert_close(first.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.1 and not first.training
    after = encoder.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # no weight moved


def test_evaluate_re_estimates_on_a_copy_and_says_so():
    encoder = encoder_for("convnet", width=4, num_blocks=2)
    before = copy.deepcopy(encoder.state_dict())
    data = TinyData(colour_split(60, 0), colour_split(30, 1), 3)
    plain = evaluate(encoder, data, {"spy": FeatureSpy()}, "all", 1)
    result = evaluate(encoder, data, {"spy": FeatureSpy()}, "all", 1, recalibrate_bn=True, bn_images=40)
    assert result["spy"]["bn_recalibrated_images"] == 40 and "bn_recalibrated_images" not in plain["spy"]
    # Re-estimated statistics normalise block1's output: its per-channel pre-ReLU mean moves to ~0.
    assert result["spy"]["block1_mean"] != pytest.approx(plain["spy"]["block1_mean"], rel=0.05)
    assert all(torch.equal(before[k], encoder.state_dict()[k]) for k in before)  # the caller's encoder untouched


def test_random_init_rows_re_estimate_batchnorm_by_default(make_config):
    cfg = make_config(["task=none"])
    assert cfg.eval.bn_recalibration == "auto"


# -- RotNet's CIFAR classifiers ---------------------------------------------------------------------
def test_rotnet_cifar_trains_both_classifiers_on_every_stage_and_leaves_the_encoder_alone():
    encoder = encoder_for("convnet", width=4, num_blocks=2)
    before = copy.deepcopy(encoder.state_dict())
    data = TinyData(colour_split(96, 0), colour_split(30, 1), 3)
    result = RotNetClassifiers(mlp_epochs=6, conv_epochs=10, batch_size=16, seed=0).run_model(encoder, data, "cpu")
    assert set(result["per_stage"]) == {"block1", "block2"}
    for stage_result in result["per_stage"].values():
        assert {"mlp_top1", "conv_top1", "mlp_val_top1", "conv_val_top1"} <= set(stage_result)
        assert stage_result["head"] == "conv"
    assert result["best_stage"] in ("block1", "block2") and result["val_images"] == 9  # 10 % of 96, per class
    assert result["top1"] > 0.6  # a colour-coded class is easy (chance 1/3)
    assert all(torch.equal(before[k], encoder.state_dict()[k]) for k in before)


# -- fine-tuning ------------------------------------------------------------------------------------
def test_finetune_takes_its_learning_rate_from_validation():
    data = TinyData(colour_split(120, 0), colour_split(30, 1), 3)
    encoder = encoder_for("convnet", width=4, num_blocks=2)
    result = FineTune(epochs=2, lrs=[1e-6, 0.05], batch_size=16, seed=0).run_model(encoder, data, "cpu")
    assert [entry["lr"] for entry in result["lr_search"]] == [1e-6, 0.05]
    assert result["lr"] == 0.05 and result["val_top1"] == result["lr_search"][1]["val_top1"]
    assert result["train_images"] == 120  # the chosen lr is fine-tuned on all of train
    semi = FineTune(epochs=1, lrs=[1e-6, 0.05], batch_size=8, shots_per_class=4).run_model(encoder, data, "cpu")
    assert semi["train_images"] == 12 and semi["val_images"] == 12
