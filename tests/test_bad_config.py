"""Bad configurations fail before any work, in one line naming the key, the value and what is allowed.

Each case goes through ``pretextlab.train.run`` exactly as the CLI would run it (compose → run),
and must leave the output directory untouched; two cases go through the real command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from pretextlab.config import ConfigError
from pretextlab.train import run

#: Files the CLI may leave in a run directory even when the config is rejected: Hydra's own.
HYDRA_FILES = {".hydra", "train.log"}

# (overrides, strings the first line of the message must contain: the key=value, then what is wrong)
BAD_INPUTS: list[tuple[list[str], list[str]]] = [
    (["data.batch_size=0"], ["data.batch_size=0", "integer >= 1"]),
    (["data.batch_size=-4"], ["data.batch_size=-4", "integer >= 1"]),
    (["data.batch_size=abc"], ["data.batch_size='abc'", "integer >= 1"]),
    (["data.batch_size=2.5"], ["data.batch_size=2.5", "integer >= 1"]),
    (["data.batch_size=1000"], ["data.batch_size=1000", "256 pretraining images"]),
    (["data.eval_batch_size=0"], ["data.eval_batch_size=0", "integer >= 1"]),
    (["data.num_workers=-1"], ["data.num_workers=-1", "integer >= 0"]),
    (["data.horizontal_flip=maybe"], ["data.horizontal_flip='maybe'", "true or false"]),
    (["data.source.image_size=4"], ["data.source.image_size=4", "integer >= 8"]),
    (["data.source.image_size=12", "backbone.num_blocks=6"], ["data.source.image_size=12", "cannot process 12 px"]),
    (["task.optimizer.lr=0"], ["task.optimizer.lr=0", "number > 0"]),
    (["task.optimizer.lr=-0.1"], ["task.optimizer.lr=-0.1", "number > 0"]),
    (["task.probe_lr=-1"], ["task.probe_lr=-1", "number > 0"]),
    (["task.online_probe_features=tiles"], ["task.online_probe_features='tiles'", "one of"]),
    (["task.optimizer.momentum=1.5"], ["task.optimizer.momentum=1.5", "[0, 1)"]),
    (["task=mae", "backbone=vit_tiny", "task.mask_ratio=1.5"], ["task.mask_ratio=1.5", "(0, 1)"]),
    (["task=mae", "backbone=vit_tiny", "task.mask_ratio=0"], ["task.mask_ratio=0", "(0, 1)"]),
    # Any task's mask fraction, whatever its yaml: the rule matches the key name under task.
    (["task=inpainting", "task.mask_fraction=1.5"], ["task.mask_fraction=1.5", "(0, 1)"]),
    (["task=mae", "backbone=vit_tiny", "data.source.image_size=30"], ["backbone=vit", "image_size=30"]),
    (["task=jigsaw", "task.grid=20"], ["task.grid=20", "does not fit a 32x32 image"]),
    (["task=jigsaw", "task.grid=2", "task.num_permutations=30"], ["task.num_permutations=30", "4! = 24"]),
    (["task=jigsaw", "task.tile_ratio=1.5"], ["task.tile_ratio=1.5", "(0, 1]"]),
    (["eval.stages=[block9]"], ["eval.stages=['block9']", "no stage(s) ['block9']"]),
    (["backbone=resnet18", "eval.stages=[block1]"], ["eval.stages=['block1']", "layer1"]),
    (["eval.pool_size=0"], ["eval.pool_size=0", "integer >= 1"]),
    (["task=inpainting", "task.encoder_stage=layer3"], ["task.encoder_stage='layer3'", "block1"]),
    (["task=inpainting", "task.discriminator_lr=0"], ["task.discriminator_lr=0", "number > 0"]),
    (["task=inpainting", "task.mask_fraction=1"], ["task.mask_fraction=1", "(0, 1)"]),
    (["eval.headline=knn/top1"], ["eval.headline='knn/top1'", "eval.protocols"]),
    (["eval.protocols.linear.lrs=[]"], ["eval.protocols.linear.lrs=[]", "at least 1"]),
    (["trainer.precision=15"], ["trainer.precision=15", "one of"]),
    (["trainer.precision=fp8"], ["trainer.precision='fp8'", "one of"]),
    (["trainer.precision=16-mixed"], ["trainer.precision='16-mixed'", "needs a GPU"]),
    (["trainer.max_epochs=-1"], ["trainer.max_epochs=-1", "integer >= 0"]),
    (["task=mae"], ["backbone=convnet", "task=mae", "transformer backbone"]),
    (["task=jigsaw", "backbone=vit_tiny"], ["backbone=vit", "task=jigsaw", "convolutional backbone"]),
    (["backbone.in_channels=1"], ["backbone.in_channels=1", "3-channel"]),
    (["backbone.width=0"], ["backbone=convnet", "width", "got 0"]),
    (["logger=wandb", "logger.wandb.mode=sometimes"], ["logger.wandb.mode='sometimes'", "offline"]),
    (["seed=abc"], ["seed='abc'", "an integer"]),
    # Seeds numpy refuses: named as the key, before any work (issue 15, defect 10).
    (["seed=-1"], ["seed=-1", "[0, 4294967295]"]),
    (["seed=4294967296"], ["seed=4294967296", "[0, 4294967295]"]),
    # No pretraining under a pretext task's name: the row would be random init labelled "rotation".
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "task=rotation pretrains", "task=none"]),
    (["task=jigsaw", "+trainer.max_steps=0"], ["trainer.max_steps=0", "random init"]),
    # Tiles and patches the backbone cannot take (defect 9): the convnet's 3 max-pools need 8 px. Jigsaw's
    # default (tile_input_size=auto) resizes tiles to what the backbone takes; null feeds them as cut.
    (["task=jigsaw", "task.tile_input_size=null", "data.source.image_size=24"],
     ["data.source.image_size=24", "6 px tiles", "at least 8 px", "data.source.image_size >= 30"]),
    (["task=jigsaw", "task.tile_input_size=null", "data.source.image_size=34", "task.grid=4"],
     ["data.source.image_size=34", "4x4 grid", "6 px tiles", "at least 8 px", "task.grid=3"]),
    (["task=jigsaw", "task.tile_input_size=4"], ["task.tile_input_size=4", "at least 8 px"]),
    (["task=jigsaw", "task.tile_input_size=null", "backbone.num_blocks=5"], ["data.source.image_size=32", "8 px tiles", "at least 16 px"]),
    (["task=context", "data.source.image_size=24", "task.min_cut_size=0", "task.min_input_size=0"],
     ["task.min_input_size=0", "4 px patches", "at least 8 px"]),
    (["task=context", "backbone.num_blocks=6"], ["task.min_input_size=16", "at least 32 px"]),
    (["task=context", "task.patch_size=20"], ["task.patch_size=20", "needs 74 px"]),
    (["task=multitask", "task.members.jigsaw.task.tile_input_size=null", "data.source.image_size=24"], ["data.source.image_size=24", "member jigsaw", "6 px tiles"]),
]

# Inputs whose problem Hydra itself reports at composition (typos, unknown options, bad syntax).
HYDRA_BAD_INPUTS: list[tuple[list[str], str]] = [
    (["data.batch_sise=3"], "batch_sise"),
    (["task=rotaton"], "rotaton"),
    (["backbone=resnet7"], "resnet7"),
    (["trainer.max_epochs=[1"], "'[1'"),
]


def _case_id(case: tuple[list[str], list[str]]) -> str:
    return " ".join(case[0])


def _assert_nothing_written(run_dir: Path) -> None:
    if run_dir.exists():
        assert {p.name for p in run_dir.iterdir()} <= HYDRA_FILES, sorted(p.name for p in run_dir.iterdir())


@pytest.mark.parametrize("overrides,expected", BAD_INPUTS, ids=[_case_id(c) for c in BAD_INPUTS])
def test_bad_input_fails_before_any_work(make_config, tmp_path, overrides, expected):
    cfg = make_config(overrides)
    with pytest.raises(ConfigError) as caught:
        run(cfg)
    first_line = str(caught.value).splitlines()[0]
    for fragment in expected:
        assert fragment in first_line, f"{fragment!r} not in {first_line!r}"
    _assert_nothing_written(tmp_path / "run")


def test_there_are_at_least_twenty_bad_inputs():
    assert len(BAD_INPUTS) + len(HYDRA_BAD_INPUTS) >= 20


def test_image_folder_without_root_or_with_unknown_policy(make_config, tmp_path):
    base = ["data=imagefolder", "logger=none"]
    with pytest.raises(ConfigError, match=r"^data\.source\.root is required but not set"):
        run(make_config(base, tiny=False))
    with pytest.raises(ConfigError, match=r"^data\.source\.on_bad_image='ignore' is not allowed: must be one of"):
        run(make_config(base + [f"data.source.root={tmp_path}", "data.source.on_bad_image=ignore"], tiny=False))
    _assert_nothing_written(tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_gpu(make_config, tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer\.accelerator='gpu' is not allowed: no CUDA GPU"):
        run(make_config(["trainer=gpu"]))
    _assert_nothing_written(tmp_path / "run")


def test_every_problem_is_listed(make_config):
    with pytest.raises(ConfigError) as caught:
        run(make_config(["data.batch_size=0", "task.optimizer.lr=-1", "trainer.max_epochs=-2"]))
    problems = caught.value.problems
    assert len(problems) == 3
    assert str(caught.value).splitlines()[0] == problems[0]
    for key_value in ("data.batch_size=0", "task.optimizer.lr=-1", "trainer.max_epochs=-2"):
        assert sum(p.startswith(key_value) for p in problems) == 1


@pytest.mark.parametrize("overrides,fragment", HYDRA_BAD_INPUTS, ids=[" ".join(c[0]) for c in HYDRA_BAD_INPUTS])
def test_hydra_reports_typos_and_unknown_options(make_config, overrides, fragment):
    with pytest.raises((HydraException, OmegaConfBaseException)) as caught:
        make_config(overrides)
    assert fragment in str(caught.value)


def _cli(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PRETEXTLAB_CACHE=str(cwd / "cache"), HYDRA_FULL_ERROR="0")
    env.pop("PRETEXTLAB_TRACEBACK", None)
    return subprocess.Popen([sys.executable, "-m", "pretextlab.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_command_line_prints_one_line_and_writes_nothing(tmp_path):
    # Both commands at once: the interpreter start-up dominates their time.
    validation = _cli(["task.optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    typo = _cli(["data.batch_sise=3", f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    _, validation_err = validation.communicate(timeout=300)
    _, typo_err = typo.communicate(timeout=300)

    assert validation.returncode == 2, validation_err
    assert validation_err.splitlines()[0] == (
        "pretextlab: error: task.optimizer.lr=-1 is not allowed: must be a number > 0"
    ), validation_err
    assert "Traceback" not in validation_err
    _assert_nothing_written(tmp_path / "a")

    assert typo.returncode == 2, typo_err
    assert typo_err.splitlines()[0].startswith(
        "pretextlab: error: data.batch_sise is not a setting of this config"), typo_err
    assert "Traceback" not in typo_err
    _assert_nothing_written(tmp_path / "b")


# (overrides, the first line of stderr starts with): what Hydra itself refuses, and keys it would
# accept that nothing reads (a `+`-added top-level key, a key the built class does not take).
CLI_TYPOS = [
    (["task=rotaton"], "pretextlab: error: could not find 'task/rotaton'; available options in 'task': colorization,"),
    (["trainer.max_epochs=[1"], "pretextlab: error: cannot parse override 'trainer.max_epochs=[1'"),
    (["+seeed=3"], "pretextlab: error: seeed is not a pretextlab setting (top-level keys: backbone,"),
    (["+trainer.max_epoch=3"], "pretextlab: error: trainer.max_epoch is not a setting of lightning.pytorch.Trainer "
                               "(did you mean trainer.max_epochs?)"),
    (["+task.tile_ratio=0.5"], "pretextlab: error: task.tile_ratio is not a setting of pretextlab.tasks.rotation.RotationTask"),
]


def test_command_line_typos_hydra_sees_or_nothing_reads_end_in_one_line_and_exit_2(tmp_path):
    runs = [(_cli([*overrides, f"hydra.run.dir={tmp_path / str(i)}"], tmp_path), start)
            for i, (overrides, start) in enumerate(CLI_TYPOS)]
    for i, (process, start) in enumerate(runs):
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, err
        assert err.splitlines()[0].startswith(start), err
        assert "Traceback" not in err
        _assert_nothing_written(tmp_path / str(i))


def test_extra_notes_are_accepted_and_recorded(make_config):
    from pretextlab.validation import validate_config

    validate_config(make_config(["+extra.notes=baseline"]))
