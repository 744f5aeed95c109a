"""The real-data table presets compose, validate and build for every row of the table (no download, no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from pretextlab.sweep import DEFAULT_VIT_BACKBONE, default_tasks
from pretextlab.validation import validate_config
from pretextlab.paths import config_dir
from tests.conftest import REPO_ROOT

from tests.conftest import compose_config

#: The rows the default sweep runs on the configured backbone, and the transformer rows it runs on vit_tiny
#: (what the task classes declare: in_default_sweep, requires).
CONV_TASKS, VIT_TASKS = default_tasks()
ROWS = [(task, None) for task in CONV_TASKS] + [(task, DEFAULT_VIT_BACKBONE) for task in VIT_TASKS]
PRESETS = ["table_cifar10_cpu", "table_cifar10_gpu", "table_stl10"]


def _preset(name: str, task: str, backbone: str | None, tmp_path: Path, *extra: str):
    overrides = [f"experiment={name}", f"task={task}", *([f"backbone={backbone}"] if backbone else []), *extra]
    return compose_config(overrides, run_dir=tmp_path / "run", tiny=False)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(("task", "backbone"), ROWS, ids=[f"{t}-{b or 'preset'}" for t, b in ROWS])
def test_every_row_of_every_preset_passes_validation(preset, task, backbone, tmp_path):
    cfg = _preset(preset, task, backbone, tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with open_dict(cfg):  # everything but the GPU itself is checked here
            cfg.trainer.accelerator = "cpu"
    validate_config(cfg)
    assert cfg.task.name == task
    assert cfg.backbone.name == (backbone.split("_")[0] if backbone else
                                 {"table_cifar10_cpu": "convnet"}.get(preset, "resnet18"))


def test_cpu_preset_is_the_small_convnet_on_a_cifar10_subset(tmp_path):
    cfg = _preset("table_cifar10_cpu", "rotation", None, tmp_path)
    assert (cfg.data.name, cfg.data.source.image_size) == ("cifar10_jpeg", 32)
    assert Path(cfg.data.source.root) == REPO_ROOT / ".." / "shared" / "datasets" / "cifar10"
    assert (cfg.backbone.name, cfg.backbone.width, cfg.backbone.num_blocks) == ("convnet", 16, 4)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    assert cfg.data.num_pretrain == 10_000 and cfg.data.on_device is False
    assert set(cfg.eval.protocols) == {"linear", "knn"} and cfg.eval.stages == "all"


def test_every_preset_task_specialisation_names_a_real_preset_and_task():
    # conf/experiment_task/<experiment>_<task>.yaml is pulled in as `optional`: a misspelt file name
    # would be skipped without a word, so every file must name an existing preset and task.
    conf = Path(config_dir())
    experiments = {p.stem for p in (conf / "experiment").glob("*.yaml")}
    tasks = {p.stem for p in (conf / "task").glob("*.yaml") if not p.stem.startswith("_")}
    pairs = {f"{e}_{t}" for e in experiments for t in tasks}
    files = sorted(p.stem for p in (conf / "experiment_task").glob("*.yaml"))
    assert files, "conf/experiment_task/ is empty"
    assert not set(files) - pairs, f"no preset/task pair for {sorted(set(files) - pairs)}"


def test_cpu_preset_task_settings_yield_to_the_user(tmp_path):
    # Per-row settings come only from validation-chosen records (python -m pretextlab.select --write).
    cfg = _preset("table_cifar10_cpu", "jigsaw", None, tmp_path, "task.grid=2", "task.num_permutations=24")
    assert (cfg.task.grid, cfg.task.num_permutations) == (2, 24)
    validate_config(cfg)


def test_cpu_preset_builds_on_the_cifar10_copy(tmp_path):
    cfg = _preset("table_cifar10_cpu", "rotation", None, tmp_path)
    if not Path(cfg.data.source.root).is_dir():
        pytest.skip(f"no CIFAR-10 JPEG copy at {cfg.data.source.root}")
    datamodule = instantiate(cfg.data)
    assert (datamodule.num_classes, datamodule.image_size, datamodule.num_pretrain) == (10, 32, 10_000)
    assert datamodule.source.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                             "horse", "ship", "truck")


def test_gpu_preset_is_resnet18_cifar_stem_on_all_images_in_bf16(tmp_path):
    cfg = _preset("table_cifar10_gpu", "rotation", None, tmp_path)
    assert (cfg.backbone.name, cfg.backbone.cifar_stem) == ("resnet18", True)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", 1, "bf16-mixed")
    assert cfg.trainer.max_epochs >= 100
    assert cfg.data.num_pretrain is None and cfg.data.on_device is True and cfg.data.num_workers == 0
    assert cfg.task.lr_scaling == "linear" and cfg.data.batch_size > cfg.task.base_batch_size
    assert set(cfg.eval.protocols) == {"linear", "knn", "finetune"}


def test_stl10_preset_pretrains_on_unlabeled_96px_with_the_imagenet_stem(tmp_path):
    cfg = _preset("table_stl10", "rotation", None, tmp_path)
    assert (cfg.data.name, cfg.data.source.name, cfg.data.source.image_size) == ("stl10", "stl10", 96)
    assert (cfg.backbone.name, cfg.backbone.cifar_stem) == ("resnet18", False)
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
    # Building the source reads nothing: the download happens at the first load only.
    datamodule = instantiate(cfg.data)
    assert (datamodule.num_classes, datamodule.image_size) == (10, 96)
    # layer4 of the ImageNet-stem ResNet-18 at 96 px: 3 x 3 maps.
    with torch.device("meta"):
        backbone = instantiate(cfg.backbone)
        maps = backbone.stage_outputs(torch.empty(2, 3, 96, 96))
    assert tuple(maps[-1].shape[-2:]) == (3, 3)


def test_presets_leave_the_vit_row_its_own_backbone(tmp_path):
    """multirun.sh runs MAE with backbone=vit_tiny under the same preset: no convnet/resnet keys may leak."""
    for preset in PRESETS:
        cfg = _preset(preset, "mae", "vit_tiny", tmp_path)
        assert "cifar_stem" not in cfg.backbone and "width" not in cfg.backbone
        assert cfg.backbone.image_size == cfg.data.source.image_size
