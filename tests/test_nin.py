"""RotNet's NIN backbone, the rotnet_cifar_gpu preset, and its published figures in the table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretextlab.backbones import build_backbone
from pretextlab.backbones.nin import NIN
from pretextlab.paths import config_dir
from pretextlab.table import build_table

from tests.conftest import compose_config
from tests.test_table import body_rows, ok_record, write_sweep


def test_nin_reports_rotnets_stages_maps_and_dims() -> None:
    net = build_backbone("nin")
    assert isinstance(net, NIN)
    assert net.stage_names == ("block1", "block2", "block3", "block4")
    assert net.stage_dims == (96, 192, 192, 192) and net.feature_dim == 192
    maps = net.stage_outputs(torch.rand(2, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(96, 16, 16), (192, 8, 8), (192, 8, 8), (192, 8, 8)]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 1, 1, 5, 1, 1, 3, 1, 1, 3, 1, 1]  # 4 blocks x 3 convs
    assert net.stage_feature_dim("block2", 8) == 192 * 64  # the unpooled map RotNet's classifiers read
    assert build_backbone(**net.build_config).stage_dims == net.stage_dims
    with pytest.raises(ValueError, match="nin needs"):
        NIN(num_blocks=0)


def test_rotnet_preset_is_nin_on_all_cifar10_for_200_epochs(tmp_path: Path) -> None:
    # eval=rotnet_cifar is another branch's config: the rest of the preset is checked with eval=linear.
    extra = [] if (config_dir() / "eval" / "rotnet_cifar.yaml").exists() else ["eval=linear"]
    cfg = compose_config(["experiment=rotnet_cifar_gpu", "task=rotation", *extra], run_dir=tmp_path, tiny=False)
    assert (cfg.backbone.name, cfg.backbone.width, cfg.backbone.num_blocks) == ("nin", 192, 4)
    assert (cfg.data.name, cfg.data.num_pretrain, cfg.data.batch_size, cfg.data.crop_padding) == (
        "cifar10_jpeg", None, 128, 4)
    assert (cfg.trainer.max_epochs, cfg.trainer.accelerator) == (200, "gpu")
    assert (cfg.task.optimizer.lr, cfg.task.optimizer.weight_decay, cfg.task.optimizer.nesterov) == (0.1, 5e-4, True)


def test_rows_in_rotnets_setting_show_rotnets_cifar_figures(tmp_path: Path) -> None:
    records = [ok_record(task, 0.5, backbone="nin", data="cifar10_jpeg") for task in ("none", "rotation")]
    records.append(ok_record("rotation", 0.5))
    markdown = build_table([write_sweep(tmp_path / "sweep", records)])
    reference = {(row[0].split(" (")[0], row[1]): row[-1] for row in body_rows(markdown)}  # labels end in their budget
    assert reference[("rotation", "nin")] == "*RotNet CIFAR-10 block2: 89.06 non-linear / 91.16 conv*"
    assert reference[("random init", "nin")] == "*RotNet CIFAR-10 random init + conv: 72.50*"
    assert reference[("rotation", "convnet")] == "*~48*"
    assert "RotNet's own setting" in markdown
