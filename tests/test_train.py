"""The training entry point end to end on tiny synthetic runs."""

import json

import pytest

from pretextlab.train import run

RESULT_FIELDS = {
    "status", "task", "backbone", "data", "seed", "pretext", "online_probe", "eval", "headline", "epochs",
    "steps", "wall_time", "pretextlab_version", "git_commit", "versions", "config", "chance_accuracy",
}


def test_results_json_has_the_documented_fields(make_config, tmp_path):
    results = run(make_config(["task=rotation"]))
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert RESULT_FIELDS <= set(stored)
    assert stored["status"] == "ok" and stored["task"] == "rotation" and stored["backbone"] == "convnet"
    linear = stored["eval"]["linear"]
    assert {"top1", "top5", "best_stage", "last_top1", "per_stage"} <= set(linear)
    assert set(stored["wall_time"]) == {"pretrain", "eval", "total"}
    assert stored["headline"] == {"metric": "linear/top1", "value": linear["top1"]}
    assert stored["config"]["task"]["name"] == "rotation"
    assert stored["steps"] == results["steps"] > 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_random_init_row_does_not_train(make_config):
    results = run(make_config(["task=none"]))
    assert results["status"] == "ok" and results["steps"] == 0 and results["epochs"] == 0
    assert results["eval"]["linear"]["top1"] > 0


@pytest.mark.parametrize("task, chance, floor", [("rotation", 0.25, 0.6), ("supervised", 0.1, 0.25)])
def test_short_run_learns_its_pretext_well_above_chance(make_config, task, chance, floor):
    results = run(make_config([f"task={task}", "data.source.num_train=1024", "trainer.max_epochs=3",
                               ]))
    assert results["chance_accuracy"] == pytest.approx(chance)
    assert results["pretext"]["val_acc"] >= floor, results["pretext"]
