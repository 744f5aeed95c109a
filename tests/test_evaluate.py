"""``python -m pretextlab.evaluate``: a pretrained backbone (run directory or export) on another dataset.

Evaluating a run on its own data with its own protocol reproduces the run's number (weights,
input preparation, the random-init rebuild and its BatchNorm re-estimation are those of
pretraining); the command line works on run and export directories, records what it evaluated,
states an image-size mismatch, fails in one line on bad input, shares train's run-directory rules
(lock, skip, refuse, overwrite), and sweeps over runs into a table with transfer columns.
"""

from __future__ import annotations

import logging

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import open_dict

from pretextlab.checkpoints import CheckpointError, read_checkpoint
from pretextlab.config import ConfigError
from tests.conftest import REPO_ROOT
from pretextlab.evaluate import (
    InputPreparation,
    cli,
    compose_evaluate,
    hydra_arguments,
    load_pretrained,
    pretrained_name,
    run as evaluate_run,
)
from pretextlab.export.format import ExportError
from pretextlab.export.run import export_backbone
from pretextlab.rundir import ExistingResultsError, JobHeldError, JobLock
from pretextlab.table import build_table
from pretextlab.train import run as train_run
from tests.conftest import FAST_RUN, compose_config
from tests.voc_tree import _private_cache, voc_root  # noqa: F401 (fixtures)

ROOT = REPO_ROOT
#: Pretraining in a few seconds: 2 steps, then a one-lr linear probe (the number evaluate must reproduce).
PRETRAIN = [o for o in FAST_RUN if o not in ("task=rotation", "eval=none", "trainer.log_every_n_steps=1")] + [
    "eval.protocols.linear.epochs=2"]
#: The same data and probe, as evaluate overrides.
SAME_EVAL = [o for o in PRETRAIN if o.startswith(("data.source.", "data.eval_batch_size", "eval."))]
#: The VOC07 SVMs on the last stage with two costs: a second or two on the tiny tree.
TINY_SVM = ["data=voc2007", "eval=voc07_svm", "eval.stages=last", "eval.protocols.voc07_svm.costs=[0.1,1.0]"]
#: Keys of a stage's probe result that measure time, not the probe.
TIMING_KEYS = ("seconds", "extraction_seconds")


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


def _evaluate(pretrained: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    cfg = compose_evaluate([f"pretrained={pretrained}", *overrides])
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    return evaluate_run(cfg)


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PRETEXTLAB_CACHE": str(tmp_path / "cache")}
    env.pop("PRETEXTLAB_TRACEBACK", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _cli(tmp_path: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pretextlab.evaluate", *arguments], cwd=ROOT,
                          env=_environment(tmp_path), capture_output=True, text=True, timeout=240, check=False)
    if check:
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _without_timing(per_stage: dict[str, Any]) -> dict[str, Any]:
    return {stage: {k: v for k, v in result.items() if k not in TIMING_KEYS} for stage, result in per_stage.items()}


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("eval_cache", "export"))
    return target


# -- the same number as pretraining's own evaluation ---------------------------------------------------
@pytest.mark.parametrize("task", ["rotation", "colorization", "none"])
def test_evaluating_a_run_on_its_own_data_reproduces_its_linear_probe(runs, tmp_path, task):
    """Same weights (checkpoint, or the random-init rebuild), same input preparation (normalisation
    with the pretraining statistics, L for colorization), same size, and for random init the same
    BatchNorm re-estimation: the same features and the same probe results, stage by stage."""
    own = json.loads((runs[task] / "results.json").read_text())["eval"]["linear"]
    results = _evaluate(runs[task], SAME_EVAL, tmp_path / "eval")
    linear = results["eval"]["linear"]
    assert _without_timing(linear["per_stage"]) == _without_timing(own["per_stage"])
    assert linear.get("bn_recalibrated_images") == own.get("bn_recalibrated_images")
    assert (linear.get("bn_recalibrated_images") or 0) > 0 if task == "none" else "bn_recalibrated_images" not in linear
    expected_kind = "lab_l" if task == "colorization" else "rgb_normalized"
    assert results["input"]["kind"] == expected_kind and results["input"]["mismatch"] is None
    assert results["schema_version"] == 1 and len(results["config"]["pretrained_weights_sha256"]) == 64


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
    import lightning as L
    from hydra.utils import instantiate

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
    _cli(tmp_path, str(runs["export"]), *TINY_SVM, f"data.source.root={voc_root}", "image_size=48",
         f"hydra.run.dir={out}")
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "transfer" and results["pretrained"]["kind"] == "export"
    assert results["pretrained"]["seed"] == 0
    # The export sits in its run's directory and agrees with the run's record: the table can find the row.
    assert results["pretrained"]["run_dir"] == str(runs["rotation"].resolve())
    assert results["pretrained"]["run_config"]["trainer"]["max_epochs"] == 1
    assert results["input"]["image_size"] == 48 and results["input"]["pretrained_image_size"] == 32
    assert results["input"]["mismatch"] == "a 32 px backbone evaluated on 48 px images"
    svm = results["eval"]["voc07_svm"]
    assert len(svm["per_class_ap"]) == 20 and list(svm["per_class_ap"])[0] == "aeroplane"
    assert 0.0 < svm["map"] <= 1.0 and svm["best_stage"] == "block4"
    assert svm["per_stage"]["block4"]["per_class"]["bird"]["test_ignored"] == 1
    cat = svm["per_stage"]["block4"]["per_class"]["cat"]
    assert (cat["train_positives"], cat["train_negatives"]) == (4, 25)  # 30 images, the difficult-only cat out
    # The run's record, written after the job was allowed to run (rundir.py), and the job lock gone.
    assert (out / ".hydra" / "config.yaml").is_file() and not (out / ".pretextlab.lock").exists()
    table = build_table([out], tmp_path / "table")
    assert "VOC07 SVM mAP % on voc2007 at 48 px" in table and "block4; 32 px backbone" in table
    assert "| rotation (1 ep × 128 img) |" in table


def test_single_label_protocols_refuse_multi_label_data(runs, voc_root, tmp_path):
    with pytest.raises(ConfigError, match="data=voc2007 is multi-label, but eval protocol.*linear.*voc07_svm"):
        _evaluate(runs["export"], ["data=voc2007", f"data.source.root={voc_root}"], tmp_path / "x")


def test_bad_input_fails_in_one_line_and_records_no_results(tmp_path):
    """Two command lines at once (the interpreter start-up dominates their time); the other kinds of bad
    input are checked in-process below, by the same code."""
    plain = tmp_path / "plain"
    plain.mkdir()
    cases = {
        "missing path": ([str(tmp_path / "missing")],
                         f"pretrained path {tmp_path / 'missing'} does not exist; give a run directory"),
        "neither run nor export": ([str(plain)], f"{plain} is neither a run directory"),
    }
    env = _environment(tmp_path)
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "pretextlab.evaluate", *arguments,
                                f"hydra.run.dir={tmp_path / name.replace(' ', '-')}"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (arguments, _) in cases.items()}
    for name, process in processes.items():
        _, err = process.communicate(timeout=240)
        lines = err.strip().splitlines()
        assert process.returncode == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("pretextlab: error: "), (name, err)
        assert cases[name][1] in lines[0], (name, err)
        assert not (tmp_path / name.replace(" ", "-") / "results.json").exists(), name


@pytest.fixture
def logging_restored():
    """Hydra, run in-process, points the loggers' handlers at this test's captured streams, which pytest
    closes afterwards: later tests would then print "--- Logging error ---". Put them back."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.mark.parametrize(("arguments", "expected"), [
    (["data=voc2007"], "no pretrained backbone given: python -m pretextlab.evaluate <run dir | export dir>"),
    (["some/run", "data.sourse.num_test=8"],
     "data.sourse.num_test is not a setting of this config (mistyped? `--cfg job` prints the composed config)"),
    (["some/run", "eval=lineer"], "could not find 'eval/lineer'; available options in 'eval': finetune, knn, "),
    (["-m", "some/run", "data=voc207,voc2007"], "could not find 'data/voc207'"),  # a sweep's job
])
def test_the_command_line_is_checked_before_anything_runs_in_one_line(capsys, monkeypatch, tmp_path, arguments,
                                                                       expected, logging_restored):
    """``cli`` (the module's entry point) refuses a command line without a backbone itself, and Hydra's
    composition errors come out as one line (pretextlab.hydra_errors) before any job runs."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # run_hydra_app sets it for this process
    with pytest.raises(SystemExit) as stopped:
        cli([*arguments, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pretextlab: error: {expected}"), err
    assert not list((tmp_path / "sweep").glob("*/results.json")) and not (tmp_path / "run").exists()


def test_keys_nothing_reads_are_refused_by_the_validator(tmp_path):
    """A key added with + at the top (a training key) or under a node whose class does not take it:
    main's unknown-key check, with evaluate.yaml's own top-level keys."""
    with pytest.raises(ConfigError, match=r"task is not a pretextlab setting \(top-level keys: checkpoint, data, "
                                          r"device, eval, extra, image_size, overwrite, paths, pretrained, seed\)"):
        _evaluate(tmp_path / "never-read", ["+task=rotation"], tmp_path / "out")
    with pytest.raises(ConfigError, match=r"data.source.colour is not a setting of pretextlab.data.SyntheticSource"):
        _evaluate(tmp_path / "never-read", ["+data.source.colour=red"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


class Foreign:
    """An arbitrary object pickled into a checkpoint: the weights-only reader refuses to build it."""


def test_bad_input_is_named(runs, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ExportError, match="neither a run directory .* nor an exported backbone"):
        load_pretrained(plain)
    copy = _copy_run(runs["rotation"], tmp_path / "copy")
    checkpoint = copy / "checkpoints" / "last.ckpt"
    stored = read_checkpoint(checkpoint)
    checkpoint.unlink()  # a link to the epoch's file: replaced by plain files below
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a complete PyTorch checkpoint.*; give checkpoint=<another "
                                              "checkpoint of this run>"):
        load_pretrained(copy)
    torch.save({**stored, "payload": Foreign()}, checkpoint)
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors.*Foreign.*was not loaded; if you "
                                              r"trust its origin, export it with .*--trust-checkpoint"):
        load_pretrained(copy)
    shutil.copy(runs["colorization"] / "checkpoints" / "last.ckpt", checkpoint)
    with pytest.raises(CheckpointError, match=r"was written by another run than the one .* describes \(task "
                                              r"'colorization' vs 'rotation'\); evaluate the run that wrote it"):
        load_pretrained(copy)
    torch.save({**stored, "state_dict": {"backbone.extra": torch.zeros(1)}}, checkpoint)
    with pytest.raises(ExportError, match="does not match the described backbone"):
        load_pretrained(copy)
    with pytest.raises(CheckpointError, match="no checkpoint at .*nowhere.ckpt"):
        load_pretrained(copy, checkpoint=str(tmp_path / "nowhere.ckpt"))
    (copy / "results.json").write_text(json.dumps({"status": "failed: boom", "config": {}}))
    with pytest.raises(ExportError, match="did not finish"):
        load_pretrained(copy)
    (copy / "results.json").write_text(json.dumps({"status": "ok", "task": "rotation"}))
    with pytest.raises(ExportError, match=r"results.json: status 'ok' but no 'backbone'.*written by pretextlab.train"):
        load_pretrained(copy)
    evaluation = tmp_path / "an-evaluation"
    _evaluate(runs["none"], SAME_EVAL, evaluation)
    with pytest.raises(ExportError, match="is an evaluation written by pretextlab.evaluate, not a pretraining run"):
        load_pretrained(evaluation)
    with pytest.raises(ExportError, match="checkpoint=.* applies to a run directory"):
        load_pretrained(runs["export"], checkpoint=str(checkpoint))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("backbone.json", "backbone.safetensors"):
        (damaged / name).write_bytes((runs["export"] / name).read_bytes())
    (damaged / "backbone.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(ExportError, match="checksum"):
        load_pretrained(damaged)


# -- the run directory: train's rules ------------------------------------------------------------------
def test_the_run_directory_is_skipped_refused_or_replaced_as_trains_are(runs, tmp_path):
    run = _copy_run(runs["rotation"], tmp_path / "run")
    out = tmp_path / "out"
    first = _evaluate(run, SAME_EVAL, out)
    written = (out / "results.json").read_bytes()
    assert _evaluate(run, SAME_EVAL, out) == json.loads(written)  # the same config: skipped
    assert (out / "results.json").read_bytes() == written
    with pytest.raises(ExistingResultsError, match="holds finished results of a different config; pass overwrite"):
        _evaluate(run, [*SAME_EVAL, "seed=1"], out)
    assert (out / "results.json").read_bytes() == written
    # The same config over other weights (the run was trained further): refused too, never skipped.
    checkpoint = run / "checkpoints" / "last.ckpt"
    stored = read_checkpoint(checkpoint)
    stored["state_dict"] = {k: v + 0.01 if k.startswith("backbone.") and v.is_floating_point() else v
                            for k, v in stored["state_dict"].items()}
    checkpoint.unlink()
    torch.save(stored, checkpoint)
    with pytest.raises(ExistingResultsError):
        _evaluate(run, SAME_EVAL, out)
    assert (out / "results.json").read_bytes() == written
    replaced = _evaluate(run, [*SAME_EVAL, "overwrite=true"], out)
    assert replaced["pretrained"]["weights_sha256"] != first["pretrained"]["weights_sha256"]
    assert json.loads((out / "results.json").read_text())["pretrained"]["weights_sha256"] == \
        replaced["pretrained"]["weights_sha256"]
    written = (out / "results.json").read_bytes()
    with JobLock(out), pytest.raises(JobHeldError, match="is being run by another process"):
        _evaluate(run, [*SAME_EVAL, "overwrite=true"], out)  # another process holds the directory
    assert (out / "results.json").read_bytes() == written


def test_a_sweep_over_runs_records_each_and_gives_transfer_columns_beside_the_pretraining_rows(runs, voc_root,
                                                                                              tmp_path):
    sweep = tmp_path / "eval-sweep"
    # Several positional paths: a sweep (pretrained=A,B,C under --multirun); a bad one fails alone.
    _cli(tmp_path, str(runs["rotation"]), str(runs["colorization"]), str(tmp_path / "gone"), *TINY_SVM,
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
    lines = table.split("\n\n")[0].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    column = header.index("VOC07 SVM mAP % on voc2007")
    assert header.index("linear top-1 % (best stage)") < column < header.index("pretext metric (val)")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:])}
    assert set(rows) == {"random init", "colorization (1 ep × 128 img)", "rotation (1 ep × 128 img)"}
    assert rows["random init"][column] == "–"
    for task in ("rotation", "colorization"):
        row = rows[f"{task} (1 ep × 128 img)"]
        assert row[2] == "synthetic" and row[column].endswith("(block4)")
        stored = json.loads(next(sweep.glob(f"*_{task}_on_voc2007/results.json")).read_text())
        assert row[column].startswith(f"{100 * stored['eval']['voc07_svm']['map']:.1f}")


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
    from pretextlab.evaluation.encoder import EvaluationEncoder

    vit = build_backbone("vit", image_size=32, patch_size=4, dim=16, depth=1, heads=2)
    encoder = EvaluationEncoder(vit, InputPreparation("rgb_normalized", [0.5] * 3, [0.25] * 3))
    _check_backbone_takes(encoder, 3, 32, "vit")
    with pytest.raises(ConfigError, match="the pretrained vit backbone cannot process 48 px images"):
        _check_backbone_takes(encoder, 3, 48, "vit")


def test_a_pooling_grid_larger_than_a_stage_map_is_one_line(runs, tmp_path):
    with pytest.raises(ConfigError, match=r"eval.pool_grids.block4=8.*the pretrained convnet backbone at 32 px"):
        _evaluate(runs["rotation"], [*SAME_EVAL, "+eval.pool_grids.block4=8"], tmp_path / "x")
