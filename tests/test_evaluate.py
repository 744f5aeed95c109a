"""``python -m pretextlab.evaluate``: a pretrained backbone (run directory or export) on another dataset.

Evaluating a run on its own data with its own protocol reproduces the run's number (weights,
input preparation and random-init rebuild are those of pretraining); the command line works on run
and export directories, records what it evaluated, states an image-size mismatch, fails in one
line on bad input, and sweeps over runs into a table with transfer columns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from pretextlab.config import ConfigError, project_root
from pretextlab.evaluate import (
    InputPreparation,
    cli,
    compose_evaluate,
    hydra_arguments,
    load_pretrained,
    pretrained_name,
    run as evaluate_run,
)
from pretextlab.export import ExportError, export_backbone
from pretextlab.table import build_table
from pretextlab.train import run as train_run
from tests.conftest import compose_config
from tests.voc_tree import write_voc_tree

ROOT = project_root()
#: Pretraining in a few seconds: 2 steps, then a one-lr linear probe (the number evaluate must reproduce).
PRETRAIN = [
    "data.source.num_train=128",
    "data.source.num_test=64",
    "data.batch_size=64",
    "data.eval_batch_size=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "task.panel_images=0",
    "logger=none",
    "eval.protocols.linear.epochs=2",
    "eval.protocols.linear.lrs=[0.05]",
    "eval.protocols.linear.weight_decays=[0.0]",
]
#: The same data and probe, as evaluate overrides.
SAME_EVAL = [o for o in PRETRAIN if o.startswith(("data.source.", "data.eval_batch_size", "eval."))]
#: The VOC07 SVMs on the last stage with two costs: a second or two on the tiny tree.
TINY_SVM = ["data=voc2007", "eval=voc07_svm", "eval.stages=last", "eval.protocols.voc07_svm.costs=[0.1,1.0]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished rotation, colorization and random-init runs (seed 0), and the rotation run's export."""
    base = tmp_path_factory.mktemp("pretrained")
    made = {}
    for task in ("rotation", "colorization", "none"):
        run_dir = base / "sweep" / f"0_{task}"
        overrides = [o for o in PRETRAIN if task != "none" or not o.startswith("task.")]
        results = train_run(compose_config([f"task={task}", *overrides], run_dir, tiny=False))
        assert results["status"] == "ok"
        made[task] = run_dir
    export_backbone(made["rotation"])
    made["export"] = made["rotation"] / "export"
    made["sweep"] = base / "sweep"
    return made


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_tree(tmp_path_factory.mktemp("voc"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRETEXTLAB_CACHE", str(tmp_path / "cache"))


def _evaluate(pretrained: Path, overrides: list[str], run_dir: Path) -> dict:
    cfg = compose_evaluate([f"pretrained={pretrained}", *overrides])
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    return evaluate_run(cfg)


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}


def _cli(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pretextlab.evaluate", *arguments], cwd=ROOT, env=_environment(),
                          capture_output=True, text=True, timeout=240, check=False)
    if check:
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# -- the same number as pretraining's own evaluation ---------------------------------------------------
@pytest.mark.parametrize("task", ["rotation", "colorization", "none"])
def test_evaluating_a_run_on_its_own_data_reproduces_its_linear_probe(runs, tmp_path, task):
    """Same weights (checkpoint, or the random-init rebuild), same input preparation (normalisation
    with the pretraining statistics, L for colorization), same size: the same features and top-1."""
    own = json.loads((runs[task] / "results.json").read_text())["eval"]["linear"]
    results = _evaluate(runs[task], SAME_EVAL, tmp_path / "eval")
    assert results["eval"]["linear"]["per_stage"] == own["per_stage"]
    expected_kind = "lab_l" if task == "colorization" else "rgb_normalized"
    assert results["input"]["kind"] == expected_kind and results["input"]["mismatch"] is None


def test_input_preparation_is_the_tasks_own(runs):
    from hydra.utils import instantiate

    images = torch.rand(4, 3, 32, 32)
    for task in ("colorization", "rotation"):
        cfg = compose_config([f"task={task}"])
        model = instantiate(cfg.task, _convert_="all", backbone=instantiate(cfg.backbone), mean=[0.4, 0.5, 0.6],
                            std=[0.2, 0.25, 0.3])
        kind = "lab_l" if task == "colorization" else "rgb_normalized"
        preparation = InputPreparation(kind, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
        torch.testing.assert_close(preparation(images), model.backbone_input(images), rtol=0, atol=0)


def test_the_random_init_rebuild_is_the_runs_own_draw(runs):
    from hydra.utils import instantiate
    import lightning as L

    cfg = compose_config(["task=none", *[o for o in PRETRAIN if not o.startswith("task.")]])
    L.seed_everything(0, workers=True)
    instantiate(cfg.data)  # what train.py does between seeding and building the backbone
    reference = instantiate(cfg.backbone)
    rebuilt = load_pretrained(runs["none"]).backbone
    for name, tensor in reference.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name


# -- the command line -------------------------------------------------------------------------------------
def test_cli_on_an_export_with_voc07_states_the_size_mismatch(runs, voc_root, tmp_path):
    out = tmp_path / "on-voc"
    _cli(str(runs["export"]), *TINY_SVM, f"data.source.root={voc_root}", "image_size=48", f"hydra.run.dir={out}")
    results = json.loads((out / "results.json").read_text())
    assert results["pretrained"]["kind"] == "export" and results["pretrained"]["seed"] == 0
    assert results["input"]["image_size"] == 48 and results["input"]["pretrained_image_size"] == 32
    assert results["input"]["mismatch"] == "a 32 px backbone evaluated on 48 px images"
    svm = results["eval"]["voc07_svm"]
    assert len(svm["per_class_ap"]) == 20 and list(svm["per_class_ap"])[0] == "aeroplane"
    assert 0.0 < svm["map"] <= 1.0 and svm["best_stage"] == "block4"
    assert svm["per_stage"]["block4"]["per_class"]["bird"]["test_ignored"] == 1
    cat = svm["per_stage"]["block4"]["per_class"]["cat"]
    assert (cat["train_positives"], cat["train_negatives"]) == (4, 25)  # 30 images, the difficult-only cat out
    table = build_table([out], tmp_path / "table")
    assert "VOC07 SVM mAP % on voc2007 at 48 px" in table and "block4; 32 px backbone" in table


def test_single_label_protocols_refuse_multi_label_data(runs, voc_root, tmp_path):
    with pytest.raises(ConfigError, match="data=voc2007 is multi-label, but eval protocol.*linear.*voc07_svm"):
        _evaluate(runs["export"], ["data=voc2007", f"data.source.root={voc_root}"], tmp_path / "x")


def test_bad_input_fails_in_one_line(runs, tmp_path):
    done = _cli(str(tmp_path / "missing"), f"hydra.run.dir={tmp_path / 'out'}", check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"pretextlab: error: pretrained path {tmp_path / 'missing'} does not exist; give a run directory "
        "(written by pretextlab.train) or an export (python -m pretextlab.export)"]


def test_no_backbone_named_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli(["data=voc2007"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("pretextlab: error: no pretrained backbone given")


class Foreign:
    """An arbitrary object pickled into a checkpoint: the weights-only reader refuses to build it."""


def test_bad_input_is_named(runs, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ExportError, match="neither a run directory .* nor an exported backbone"):
        load_pretrained(plain)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((runs["rotation"] / "results.json").read_text())
    (copy / "checkpoints").mkdir()
    (copy / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot be read as a weights-only checkpoint"):
        load_pretrained(copy)
    torch.save({"state_dict": {}, "payload": Foreign()}, copy / "checkpoints" / "last.ckpt")
    with pytest.raises(ExportError, match="weights-only"):
        load_pretrained(copy)
    (copy / "results.json").write_text(json.dumps({"status": "failed: boom", "config": {}}))
    with pytest.raises(ExportError, match="did not finish"):
        load_pretrained(copy)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("backbone.json", "backbone.safetensors"):
        (damaged / name).write_bytes((runs["export"] / name).read_bytes())
    (damaged / "backbone.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(ExportError, match="checksum"):
        load_pretrained(damaged)


def test_a_sweep_over_runs_records_each_and_gives_transfer_columns_beside_the_pretraining_rows(runs, voc_root,
                                                                                              tmp_path):
    sweep = tmp_path / "eval-sweep"
    # Several positional paths: a sweep (pretrained=A,B,C under --multirun); a bad one fails alone.
    _cli(str(runs["rotation"]), str(runs["colorization"]), str(tmp_path / "gone"), *TINY_SVM,
         f"data.source.root={voc_root}", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert jobs == ["0_0_rotation_on_voc2007", "1_0_colorization_on_voc2007", "2_gone_on_voc2007"]
    results = json.loads((sweep / "0_0_rotation_on_voc2007" / "results.json").read_text())
    assert results["status"] == "ok" and results["kind"] == "transfer" and results["data"] == "voc2007"
    pretrained = results["pretrained"]
    assert pretrained["path"] == str(runs["rotation"].resolve()) and pretrained["kind"] == "run"
    assert (pretrained["task"], pretrained["backbone"], pretrained["data"], pretrained["seed"]) == (
        "rotation", "convnet", "synthetic", 0)
    assert len(pretrained["weights_sha256"]) == 64 and results["config"]["pretrained"] == str(runs["rotation"])
    assert results["input"]["statistics_from"] == "the backbone's pretraining data"
    assert results["input"]["image_size"] == 32 and results["input"]["mismatch"] is None
    colorization = json.loads((sweep / "1_0_colorization_on_voc2007" / "results.json").read_text())
    assert colorization["input"]["kind"] == "lab_l" and colorization["input"]["mean"] is None
    failed = json.loads((sweep / "2_gone_on_voc2007" / "results.json").read_text())
    assert failed["status"].startswith("failed: pretrained path") and failed["kind"] == "transfer"
    table = build_table([runs["sweep"], sweep], tmp_path / "table")
    assert "Failed evaluations (not in the table):" in table and "does not exist" in table
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = header.index("VOC07 SVM mAP % on voc2007")
    assert header.index("linear top-1 % (best stage)") < column < header.index("pretext metric (val)")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:5])}
    assert set(rows) == {"random init", "colorization", "rotation"}
    assert rows["random init"][column] == "–"
    for task in ("rotation", "colorization"):
        assert rows[task][2] == "synthetic" and rows[task][column].endswith("(block4)")
        stored = json.loads(next(sweep.glob(f"*_{task}_on_voc2007/results.json")).read_text())
        assert rows[task][column].startswith(f"{100 * stored['eval']['voc07_svm']['map']:.1f}")


# -- small pieces ------------------------------------------------------------------------------------------
def test_positional_paths_become_the_pretrained_override():
    assert hydra_arguments(["runs/a", "data=cifar10_jpeg"]) == ["data=cifar10_jpeg", "pretrained='runs/a'"]
    assert hydra_arguments(["a", "b,c d", "eval=knn"]) == ["--multirun", "eval=knn", "pretrained='a','b,c d'"]
    assert hydra_arguments(["-m", "a"]) == ["-m", "pretrained='a'"]
    assert hydra_arguments(["--config-name", "evaluate", "pretrained=x", "~eval.protocols.linear"]) == [
        "--config-name", "evaluate", "pretrained=x", "~eval.protocols.linear"]
    assert hydra_arguments(["--cfg", "job"]) == ["--cfg", "job"]
    with pytest.raises(ConfigError, match="no pretrained backbone given"):
        hydra_arguments(["data=voc2007"])
    with pytest.raises(ConfigError, match="either as a path or as pretrained"):
        hydra_arguments(["a", "pretrained=b"])
    assert pretrained_name("outputs/runs/2026_rotation/") == "2026_rotation"
    assert pretrained_name("outputs/runs/r/export") == "r-export"
    assert pretrained_name("outputs/runs/r/export/backbone.safetensors") == "r-export"
    assert pretrained_name("/x/my model.safetensors") == "my_model"


def test_a_vit_refuses_another_image_size_in_one_line():
    from pretextlab.backbones import build_backbone
    from pretextlab.evaluate import _check_backbone_takes
    from pretextlab.tasks.base import EvaluationEncoder

    vit = build_backbone("vit", image_size=32, patch_size=4, dim=16, depth=1, heads=2)
    encoder = EvaluationEncoder(vit, InputPreparation("rgb_normalized", [0.5] * 3, [0.25] * 3))
    _check_backbone_takes(encoder, 3, 32, "vit")
    with pytest.raises(ConfigError, match="the pretrained vit backbone cannot process 48 px images"):
        _check_backbone_takes(encoder, 3, 48, "vit")
