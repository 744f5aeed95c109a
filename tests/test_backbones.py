import pytest
import torch

from pretextlab.backbones import available_backbones, build_backbone


@pytest.mark.parametrize(
    "name, kwargs, size, names, dims",
    [
        ("convnet", {"width": 8}, 32, ("block1", "block2", "block3", "block4"), (8, 16, 32, 64)),
        ("resnet18", {"cifar_stem": True}, 32, ("layer1", "layer2", "layer3", "layer4"), (64, 128, 256, 512)),
        ("resnet50", {"cifar_stem": False}, 64, ("layer1", "layer2", "layer3", "layer4"), (256, 512, 1024, 2048)),
    ],
)
def test_backbone_reports_stages_and_feature_dim(name, kwargs, size, names, dims):
    backbone = build_backbone(name, **kwargs).eval()
    assert backbone.stage_names == names and backbone.stage_dims == dims
    assert backbone.feature_dim == dims[-1]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert backbone(x).shape == (2, dims[-1])
        stages = backbone.forward_stages(x)
        assert [tuple(v.shape) for v in stages.values()] == [(2, d) for d in dims]
        pooled2 = backbone.forward_stages(x, [names[0]], pool_size=2)[names[0]]
        assert pooled2.shape == (2, backbone.stage_feature_dim(names[0], pool_size=2))


def test_input_channels_are_a_parameter():
    for name in ("convnet", "resnet18"):
        backbone = build_backbone(name, in_channels=1)
        assert backbone(torch.randn(2, 1, 32, 32)).shape[0] == 2


def test_cifar_stem_keeps_resolution():
    cifar = build_backbone("resnet18", cifar_stem=True).eval()
    imagenet = build_backbone("resnet18", cifar_stem=False).eval()
    x = torch.randn(1, 3, 32, 32)
    assert cifar.stage_outputs(x)[-1].shape[-1] == 4
    assert imagenet.stage_outputs(x)[-1].shape[-1] == 1


def test_unknown_backbone_and_stage_fail_clearly():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*available"):
        build_backbone("resnet9")
    with pytest.raises(ValueError, match="no stage"):
        build_backbone("convnet").forward_stages(torch.randn(1, 3, 32, 32), ["layer9"])
    assert {"convnet", "resnet18", "resnet50"} <= set(available_backbones())
