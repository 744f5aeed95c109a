import pytest
import torch
from hydra.utils import instantiate

from pretextlab.backbones import available_backbones, build_backbone
from pretextlab.validation import validate_config


def tiny_vit(**overrides):
    settings = {"image_size": 32, "patch_size": 4, "dim": 32, "depth": 3, "heads": 4}
    settings.update(overrides)
    return build_backbone("vit", **settings).eval()


def test_stages_are_token_sequences_after_each_block():
    vit = tiny_vit()
    assert "vit" in available_backbones()
    assert vit.stage_names == ("block1", "block2", "block3") and vit.stage_dims == (32, 32, 32)
    assert vit.feature_dim == 32 and not vit.is_convolutional
    assert vit.grid_size == (8, 8) and vit.num_patches == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outputs = vit.stage_outputs(x)
        assert [tuple(o.shape) for o in outputs] == [(2, 65, 32)] * 3  # CLS + 8x8 patches
        assert vit(x).shape == (2, 32)
        stages = vit.forward_stages(x, pool_size=2)  # pool_size has no meaning for tokens
    assert [tuple(v.shape) for v in stages.values()] == [(2, 32)] * 3
    assert vit.stage_feature_dim("block1", pool_size=2) == 32


def test_pooling_is_the_patch_mean_or_the_cls_token():
    x = torch.randn(2, 3, 32, 32)
    mean_vit = tiny_vit(pool="mean")
    cls_vit = tiny_vit(pool="cls")
    cls_vit.load_state_dict(mean_vit.state_dict())
    with torch.no_grad():
        last = mean_vit.stage_outputs(x)[-1]
        assert torch.allclose(mean_vit(x), last[:, 1:].mean(dim=1))
        assert torch.allclose(cls_vit(x), last[:, 0])
        block1 = mean_vit.forward_stages(x, ["block1"])["block1"]
        assert torch.allclose(block1, mean_vit.stage_outputs(x)[0][:, 1:].mean(dim=1))


def test_encoder_runs_on_any_subset_of_tokens():
    vit = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.embed(x)
        assert tokens.shape == (2, 64, 32)
        # On all tokens, encode_tokens is exactly the last stage.
        assert torch.allclose(vit.encode_tokens(tokens), vit.stage_outputs(x)[-1], atol=1e-6)
        assert vit.encode_tokens(tokens[:, :16]).shape == (2, 17, 32)


def test_build_config_rebuilds_the_same_network():
    vit = tiny_vit(pool="cls", mlp_ratio=2.0, in_channels=1)
    rebuilt = build_backbone(**vit.build_config).eval()
    rebuilt.load_state_dict(vit.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), vit(x))
    assert "pos_embed" not in vit.state_dict()  # fixed sine-cosine: rebuilt, never stored


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 30}, "multiple of patch_size"),
        ({"dim": 30, "heads": 4}, "multiple of heads"),
        ({"dim": 6, "heads": 3}, "multiple of 4"),
        ({"pool": "max"}, "pool='max'"),
    ],
)
def test_bad_vit_settings_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_vit(**overrides)


@pytest.mark.parametrize("backbone", ["vit_tiny", "vit_small"])
@pytest.mark.parametrize("task", ["mae", "rotation", "supervised"])
def test_vit_configs_compose_and_validate(make_config, backbone, task):
    overrides = [f"task={task}", f"backbone={backbone}"]
    if backbone == "vit_small":
        overrides.append("backbone.patch_size=4")  # 32 px synthetic images
    cfg = make_config(overrides)
    validate_config(cfg)
    with torch.device("meta"):
        vit = instantiate(cfg.backbone)
    assert vit.image_size == 32 and vit.in_channels == 3 and not vit.is_convolutional
