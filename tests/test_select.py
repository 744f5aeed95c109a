"""Validation-only selection: test is never loaded, every row gets the same budget, the record holds no test figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from pretextlab.paths import config_dir
from tests.conftest import REPO_CONF
from pretextlab.data.sources import DataSource, Split, SplitName
from pretextlab.select import (
    Candidate,
    HoldoutSource,
    SelectError,
    candidate_config,
    candidates,
    experiment_task_yaml,
    load_space,
    main,
)


class NoTestSource(DataSource):
    """A source that fails the moment anything asks for its test split."""

    name = "no-test"
    num_classes = 2
    image_size = 8
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        self.train = Split(torch.zeros(40, 3, 8, 8, dtype=torch.uint8), torch.arange(40) % 2)

    def _load(self, split: SplitName) -> Split:
        if split == "test":
            raise AssertionError("the test split was loaded during selection")
        return self.train


def test_holdout_source_never_reads_test_and_keeps_the_held_out_images_out_of_training() -> None:
    source = HoldoutSource(NoTestSource(), fraction=0.25, seed=0)
    test, train, pretrain = source.load("test"), source.load("train"), source.load("pretrain")
    assert (len(test), len(train), len(pretrain)) == (10, 30, 30)
    assert torch.bincount(test.labels).tolist() == [5, 5]  # stratified


def test_every_task_gets_the_same_budget() -> None:
    spaces = {task: candidates(task, 10) for task in ("jigsaw", "context", "inpainting", "colorization", "rotation")}
    budgets = {task: (len(c), sum(x.epochs for x in c)) for task, c in spaces.items()}
    assert set(budgets.values()) == {(4, 60)}, budgets
    with pytest.raises(SelectError, match="no search space"):
        load_space("supervised")


def test_candidate_config_swaps_test_for_a_holdout_and_probes_linear_only(tmp_path: Path) -> None:
    cfg = candidate_config(["experiment=table_cifar10_cpu", "task=jigsaw"],
                           Candidate("grid3-e10", ["task.grid=3", "task.num_permutations=100"], 10), tmp_path, 0.1,
                           [REPO_CONF])
    assert cfg.data.source._target_ == "pretextlab.select.HoldoutSource"
    assert cfg.data.source.base._target_ == "pretextlab.data.image_folder"  # in memory or streamed, as configured
    assert list(cfg.eval.protocols) == ["linear"] and cfg.eval.headline == "linear/val_top1"
    assert (cfg.task.grid, cfg.trainer.max_epochs, cfg.data.num_pretrain) == (3, 10, 10_000)
    # The old per-task record of the preset does not leak into a candidate.
    colorization = candidate_config(["experiment=table_cifar10_cpu", "task=colorization"],
                                    Candidate("x", [], 10), tmp_path, 0.1, [REPO_CONF])
    assert colorization.trainer.max_epochs == 10
    source = instantiate(candidate_config(["task=rotation"], Candidate("x", [], 1), tmp_path, 0.1).data).source
    assert isinstance(source, HoldoutSource)


def test_the_record_holds_validation_figures_only() -> None:
    record = {"task": "jigsaw", "experiment": "table_cifar10_cpu", "budget_epochs": 60, "pretrain_images": 10000,
              "chosen": "grid2-e10", "chosen_overrides": ["task.grid=2", "task.num_permutations=24",
                                                          "trainer.max_epochs=10"],
              "candidates": [{"name": "grid2-e10", "val_top1": 0.5, "best_stage": "block4", "holdout_top1": 0.49},
                             {"name": "grid3-e10", "val_top1": 0.4, "best_stage": "block3", "holdout_top1": 0.41}]}
    text = experiment_task_yaml(record, "python -m pretextlab.select experiment=table_cifar10_cpu task=jigsaw")
    assert "grid2-e10: 50.0 (block4)  <- chosen" in text and "test" not in text.replace("test split was never", "")
    assert "task:\n  grid: 2\n  num_permutations: 24\ntrainer:\n  max_epochs: 10" in text


def test_every_preset_record_names_its_validation_figures() -> None:
    records = [*(config_dir() / "experiment_task").glob("*.yaml"), *(REPO_CONF / "experiment_task").glob("*.yaml")]
    for path in sorted(p for p in records if p.name.startswith("table_cifar10_cpu_")):
        text = path.read_text().lower()
        assert "validation" in text and "chosen on validation only" in text, path
        assert "test" not in text.replace("the test split was never loaded", ""), path


def test_a_task_without_a_space_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task=supervised", "--out", "/nonexistent/never-written"]) == 2
    assert capsys.readouterr().err.startswith("pretextlab: error: task=supervised has no search space")


@pytest.mark.slow
def test_a_tiny_selection_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import TINY, TINY_LINEAR

    assert main([*TINY, *TINY_LINEAR, "task=rotation", "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert "<- chosen" in capsys.readouterr().out
    assert (tmp_path / "rotation" / "selection.json").is_file()
