"""Tasks carry their own knowledge: a task class declares its table label, order, pretext metric,
references, input kind, default-sweep membership and config checks; results.json records them
(``task_info``) and the table, export, evaluate, validation and sweep read them from there."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from omegaconf import open_dict

from pretextlab.config import ConfigError, compose_train
from pretextlab.export import export_backbone, read_metadata
from pretextlab.results import ResultsError, ResultsRecord
from pretextlab.sweep import default_tasks
from pretextlab.table.cli import build_table
from pretextlab.table.render import build_columns, to_csv
from pretextlab.table.collect import build_rows, collect_results, merge_results
from pretextlab.tasks.colorization import ColorizationTask
from pretextlab.tasks.config_checks import TaskConfigCheck
from pretextlab.tasks.rotation import RotationTask
from pretextlab.train import run
from pretextlab.validation import problem, validate_config
from tests.conftest import FAST_RUN, compose_config
from tests.user_project import write_user_project

FAST = [o for o in FAST_RUN if not o.startswith("task=")]


@pytest.fixture
def user_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the toy task's module (importable: on sys.path) and its config folder."""
    project = write_user_project(tmp_path / "project")
    monkeypatch.syspath_prepend(str(project))
    return project


def _run_into(sweep: Path, index: int, task: str, config_dirs: list[Path]) -> dict[str, Any]:
    settings = [o for o in FAST if task != "none" or not o.startswith("task.")]  # random init has no panels
    cfg = compose_train([*settings, f"task={task}"], config_dirs=config_dirs)
    with open_dict(cfg):
        cfg.paths.run_dir = str(sweep / f"{index}_{task}")
    return run(cfg)


def _csv_rows(rows_csv: str) -> dict[str, dict[str, str]]:
    return {row["task"]: row for row in csv.DictReader(io.StringIO(rows_csv))}


def test_a_task_from_the_users_folder_lands_in_the_table_with_what_it_declares(user_project, tmp_path):
    sweep = tmp_path / "sweep"
    config_dirs = [user_project / "my_configs"]
    for index, task in enumerate(["none", "toyflip", "rotation"]):
        results = _run_into(sweep, index, task, config_dirs)
        assert results["status"] == "ok", results["status"]

    stored = json.loads((sweep / "1_toyflip" / "results.json").read_text())
    assert stored["task_info"] == {
        "class": "toy_flip_task.ToyFlipTask", "label": "mirror flip", "order": 45.0,
        "pretext_metric": {"key": "val_agreement", "label": "flip agreement", "is_accuracy": True},
        "reference": {"imagenet_linear_top1": 12.0, "rotnet_cifar": None}, "input_kind": "rgb_normalized"}
    assert ResultsRecord.read(sweep / "1_toyflip" / "results.json").task_info == stored["task_info"]
    rotation = json.loads((sweep / "2_rotation" / "results.json").read_text())["task_info"]
    assert rotation["class"] == "pretextlab.tasks.rotation.RotationTask" and rotation["order"] == 50.0

    markdown = build_table([sweep])
    labels = [line.split(" | ")[0].lstrip("| ") for line in markdown.split("\n\n")[0].splitlines()[2:]]
    assert [label.split(" (")[0] for label in labels] == ["random init", "mirror flip", "rotation"]
    rows = build_rows(merge_results(collect_results([sweep])))
    by_task = _csv_rows(to_csv(rows, build_columns(rows)))
    assert by_task["toyflip"]["pretext_metric"] == "flip agreement"
    assert by_task["rotation"]["pretext_metric"] == "acc"
    assert by_task["toyflip"]["reference_imagenet_linear_top1_pct_published"] == "12.0"
    assert by_task["rotation"]["reference_imagenet_linear_top1_pct_published"] == "48.0"

    # A record written before task_info, of a task whose class cannot be imported here: neutral facts
    # (its own name, after rotation and before supervised, the general pretext metric list).
    old = json.loads((sweep / "1_toyflip" / "results.json").read_text())
    del old["task_info"]
    old["config"]["task"]["_target_"] = "gone_module.ToyFlipTask"
    (sweep / "1_toyflip" / "results.json").write_text(json.dumps(old))
    rows = build_rows(merge_results(collect_results([sweep])))
    assert [row.label.split(" (")[0] for row in rows] == ["random init", "rotation", "toyflip"]
    assert _csv_rows(to_csv(rows, build_columns(rows)))["toyflip"]["pretext_metric"] == "acc"


def test_results_json_refuses_a_task_info_that_is_not_an_object():
    with pytest.raises(ResultsError, match=r"task_info=\[1\] must be an object"):
        ResultsRecord.from_json({"status": "failed: x", "task_info": [1]})


def test_a_tasks_declarations_can_depend_on_its_config():
    assert ColorizationTask.task_info({"name": "colorization"})["pretext_metric"]["key"] == "val_acc"
    regression = ColorizationTask.task_info({"name": "colorization", "head": "regression"})
    assert regression["pretext_metric"] == {"key": "val_ab_mse", "label": "ab MSE", "is_accuracy": False}
    assert regression["input_kind"] == "lab_l" and regression["order"] == 30.0


def test_export_reads_the_input_kind_from_task_info_then_the_class_then_the_default(tmp_path):
    run_dir = tmp_path / "colorization"
    results = run(compose_config([*FAST_RUN, "task=colorization"], run_dir, tiny=False))
    assert results["task_info"]["input_kind"] == "lab_l"

    def exported_kind(folder: Path, change: Any) -> str:
        copy = tmp_path / folder
        shutil.copytree(run_dir, copy)
        record = json.loads((copy / "results.json").read_text())
        change(record)
        (copy / "results.json").write_text(json.dumps(record))
        return str(read_metadata(export_backbone(copy))["input"]["kind"])

    def unimportable(record: dict[str, Any]) -> None:
        record["config"]["task"]["_target_"] = "gone_module.ColorizationTask"

    def unknown(record: dict[str, Any]) -> None:  # no packaged task config of that name either
        unimportable(record)
        del record["task_info"]
        record["task"] = "mystery"

    assert exported_kind(Path("as_written"), lambda record: None) == "lab_l"
    assert exported_kind(Path("recorded"), unimportable) == "lab_l"  # task_info alone says it
    assert exported_kind(Path("old"), lambda record: record.pop("task_info")) == "lab_l"  # the class says it
    assert exported_kind(Path("unknown"), unknown) == "rgb_normalized"  # nobody says: the default


class PickyRotationTask(RotationTask):
    """A task with a config check of its own: it refuses head_hidden=7, and remembers what it was given."""

    given: list[TaskConfigCheck] = []

    @classmethod
    def config_problems(cls, check: TaskConfigCheck) -> list[str]:
        cls.given.append(check)
        if check.setting("head_hidden") == 7:
            return [problem(check.key("head_hidden"), 7, f"{check.label} refuses it at {check.image_size} px")]
        return []


PICKY = f"{__name__}.PickyRotationTask"


def test_validation_runs_a_tasks_own_config_check(make_config):
    PickyRotationTask.given.clear()
    validate_config(make_config(["task=rotation", f"task._target_={PICKY}"]))
    (check,) = PickyRotationTask.given
    assert (check.prefix, check.label, check.image_size, check.backbone_name) == ("task.", "task=rotation", 32,
                                                                                   "convnet")
    assert list(check.backbone.stage_names) and str(next(check.backbone.parameters()).device) == "meta"
    with pytest.raises(ConfigError) as refused:
        validate_config(make_config(["task=rotation", f"task._target_={PICKY}", "task.head_hidden=7"]))
    assert str(refused.value) == "task.head_hidden=7 is not allowed: task=rotation refuses it at 32 px"


def test_a_multitask_asks_each_member_for_its_own_checks(make_config):
    with pytest.raises(ConfigError) as refused:
        validate_config(make_config(["task=multitask", f"task.members.rotation.task._target_={PICKY}",
                                     "task.members.rotation.task.head_hidden=7"]))
    assert str(refused.value) == ("task.members.rotation.task.head_hidden=7 is not allowed: "
                                  "task=multitask (member rotation) refuses it at 32 px")


def test_the_default_sweep_is_what_the_task_classes_declare_in_table_order():
    assert default_tasks() == (["none", "inpainting", "context", "colorization", "jigsaw", "rotation", "supervised"],
                               ["mae"])
