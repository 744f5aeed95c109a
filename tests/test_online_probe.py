"""Where the online probe takes its features from (``task.online_probe_features``)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from pretextlab.tasks.base import PretextTask, TaskConfigError

# Tasks whose backbone sees tiles, patches, masked images or visible tokens rather than the clean
# images: in "pretext" mode their probe must cost no backbone pass of its own.
POOLING_TASKS = [("jigsaw", "convnet"), ("context", "convnet"), ("inpainting", "convnet"), ("mae", "vit_tiny")]


def _build(make_config, task: str, backbone: str, source: str, *overrides: str) -> PretextTask:
    cfg = make_config([f"task={task}", f"backbone={backbone}", f"task.online_probe_features={source}", *overrides])
    module = instantiate(cfg.task, backbone=instantiate(cfg.backbone), num_classes=10, mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25), image_size=32, _convert_="all")
    module.log = lambda *args, **kwargs: None  # no trainer attached
    module.log_dict = lambda *args, **kwargs: None
    return module


def _backbone_passes(task: PretextTask, images: torch.Tensor) -> tuple[list[bool], torch.Tensor]:
    """Run one pretext step and the probe; record each backbone pass (with or without grad)."""
    passes: list[bool] = []
    backbone = task.backbone
    original_stage_outputs, original_encode = backbone.stage_outputs, getattr(backbone, "encode_tokens", None)

    def stage_outputs(x: torch.Tensor) -> list[torch.Tensor]:
        passes.append(torch.is_grad_enabled())
        return original_stage_outputs(x)

    backbone.stage_outputs = stage_outputs  # type: ignore[method-assign]
    if original_encode is not None:  # MAE's encoder path on the visible tokens
        def encode_tokens(tokens: torch.Tensor) -> torch.Tensor:
            passes.append(torch.is_grad_enabled())
            return original_encode(tokens)

        backbone.encode_tokens = encode_tokens  # type: ignore[method-assign]
    try:
        output = task.pretext_step(images, torch.zeros(len(images), dtype=torch.long))
        features = task.probe_features(output, images)
    finally:
        backbone.stage_outputs = original_stage_outputs  # type: ignore[method-assign]
        if original_encode is not None:
            backbone.encode_tokens = original_encode  # type: ignore[method-assign]
    return passes, features


@pytest.mark.parametrize(("task_name", "backbone"), POOLING_TASKS)
def test_pretext_source_reuses_the_step_and_images_source_adds_one_no_grad_pass(make_config, task_name, backbone):
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pretext = _build(make_config, task_name, backbone, "pretext").train()
    passes, features = _backbone_passes(pretext, images)
    assert passes == [True]  # the pretext pass only
    assert features.shape == (6, pretext.backbone.feature_dim)

    whole = _build(make_config, task_name, backbone, "images").train()
    passes, features = _backbone_passes(whole, images)
    assert passes == [True, False]  # plus one no-grad pass on the whole images
    assert features.shape == (6, whole.backbone.feature_dim)


def test_pretext_features_are_the_mean_over_each_images_tiles(make_config):
    task = _build(make_config, "jigsaw", "convnet", "pretext").eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tile_features: list[torch.Tensor] = []
    original = task.backbone.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        tile_features.append(original(x))
        return tile_features[-1]

    task.backbone.forward = forward  # type: ignore[method-assign]
    output = task.pretext_step(images, torch.zeros(3, dtype=torch.long))
    tiles = task.grid * task.grid
    expected = tile_features[0].view(3, tiles, -1).mean(dim=1)
    assert output.pretext_features is not None
    assert torch.allclose(output.pretext_features, expected)


def test_context_pretext_features_average_the_patches_of_their_own_image(make_config):
    from pretextlab.tasks.context import _per_image_mean

    features = torch.arange(12.0).view(6, 2)
    image_index = torch.tensor([0, 0, 1, 1, 2, 2])
    means = _per_image_mean(features, image_index, 3)
    assert torch.equal(means, torch.tensor([[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]))


def test_clean_features_win_over_both_sources(make_config):
    # rotation's upright quarter is the clean images' own features: no extra pass in either mode
    for source in ("pretext", "images"):
        passes, _ = _backbone_passes(_build(make_config, "rotation", "convnet", source).train(),
                                     torch.rand(4, 3, 32, 32))
        assert passes == [True]


def test_an_unknown_source_is_refused():
    from pretextlab.backbones.convnet import ConvNet
    from pretextlab.tasks.rotation import RotationTask

    with pytest.raises(TaskConfigError, match="online_probe_features='tiles'"):
        RotationTask(backbone=ConvNet(), online_probe_features="tiles")


@pytest.mark.parametrize("task_name", ["jigsaw", "context"])
def test_the_probe_never_changes_the_pretrained_backbone(make_config, task_name):
    # Three short trainings from the same seed: no probe, the tile/patch-mean probe, the whole-image
    # probe. The probe is a monitor: weights AND BatchNorm running statistics must come out equal.
    states: list[dict[str, torch.Tensor]] = []
    initial: dict[str, torch.Tensor] = {}
    for source, *overrides in (["images"], ["pretext"], ["pretext", "task.online_probe=false"]):
        task = _build(make_config, task_name, "convnet", source, *overrides).train()
        # the same starting weights everywhere (building the probe draws random numbers)
        initial = initial or {k: v.clone() for k, v in task.state_dict().items()}
        task.load_state_dict({k: v for k, v in initial.items() if k in task.state_dict()}, strict=False)
        torch.manual_seed(2)
        backbone_params = list(task.backbone.parameters())
        optimizer = torch.optim.SGD(backbone_params, lr=0.05)
        images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(8) % 10
        for _ in range(3):
            loss = task.training_step((images, labels), 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        states.append({k: v.clone() for k, v in task.backbone.state_dict().items()})
    assert any("running_mean" in key for key in states[0])
    for other in states[1:]:
        assert states[0].keys() == other.keys()
        assert all(torch.equal(states[0][key], other[key]) for key in states[0])
