"""Each backbone tells the smallest input it takes, and the validator's verdict on tiles and patches
is the training step's: a config it accepts trains, one it refuses would have died mid-epoch."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from pretextlab.backbones import build_backbone
from pretextlab.config import ConfigError
from pretextlab.validation import validate_config

BACKBONES = [
    {"name": "convnet"},
    {"name": "convnet", "num_blocks": 2},
    {"name": "convnet", "num_blocks": 6, "width": 4},
    {"name": "convnet", "num_blocks": 1},
    {"name": "resnet18", "cifar_stem": True},
    {"name": "resnet18"},
]


@pytest.mark.parametrize("config", BACKBONES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_min_input_size_is_exact(config):
    backbone = build_backbone(**config).eval()
    smallest = backbone.min_input_size
    with torch.no_grad():
        backbone.stage_outputs(torch.rand(2, 3, smallest, smallest))  # accepted
        if smallest > 1:
            with pytest.raises(RuntimeError, match="too small"):
                backbone.stage_outputs(torch.rand(2, 3, smallest - 1, smallest - 1))


def test_a_vit_takes_its_image_size_only():
    vit = build_backbone(name="vit", image_size=32, patch_size=4, dim=16, depth=1, heads=2)
    assert vit.min_input_size == vit.fixed_input_size == 32


# (overrides, refused by the validator?)
BOUNDARIES = [
    # Tiles fed as cut (tile_input_size=null) meet the backbone's minimum or are refused.
    (["task=jigsaw", "task.tile_input_size=null", "data.source.image_size=24"], True),
    (["task=jigsaw", "task.tile_input_size=null", "data.source.image_size=30"], False),  # 8 px tiles: the minimum
    (["task=jigsaw", "task.tile_input_size=null", "data.source.image_size=34", "task.grid=4"], True),
    (["task=jigsaw", "task.tile_input_size=null", "data.source.image_size=40", "task.grid=4"], False),
    (["task=jigsaw", "data.source.image_size=24", "task.tile_input_size=8"], False),
    (["task=jigsaw", "task.tile_input_size=null", "data.source.image_size=24", "backbone=resnet18"], False),
    # The default, tile_input_size=auto, sizes tiles to what the backbone takes: small images train.
    (["task=jigsaw", "data.source.image_size=24"], False),
    # Context cut at the image's own size (min_cut_size=0): patches fed as cut or upsampled.
    (["task=context", "data.source.image_size=24", "task.min_cut_size=0", "task.min_input_size=0"], True),
    (["task=context", "data.source.image_size=24", "task.min_cut_size=0", "task.min_input_size=8"], False),
    (["task=context", "data.source.image_size=24", "task.min_input_size=0"], False),  # cut from 64 px
]


@pytest.mark.parametrize("overrides,refused", BOUNDARIES, ids=[" ".join(o) for o, _ in BOUNDARIES])
def test_the_validator_agrees_with_the_training_step(make_config, overrides, refused):
    cfg = make_config(overrides + ["task.panel_images=0"])
    if refused:
        with pytest.raises(ConfigError, match="feeds the backbone"):
            validate_config(cfg)
    else:
        validate_config(cfg)
    # The task as run() builds it, one pretext step on a small batch: it fails exactly when refused.
    size = int(cfg.data.source.image_size)
    task = instantiate(cfg.task, _convert_="all", backbone=instantiate(cfg.backbone), num_classes=10,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=size)
    images, labels = torch.rand(4, 3, size, size), torch.zeros(4, dtype=torch.long)
    if refused:
        with pytest.raises(RuntimeError, match="too small"):
            task.pretext_step(images, labels)
    else:
        assert torch.isfinite(task.pretext_step(images, labels).loss)
