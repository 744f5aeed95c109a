"""Checkpoints and resume: a run killed mid-training and resumed ends exactly where an uninterrupted one does."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from pretextlab.checkpoints import CheckpointError, read_checkpoint
from pretextlab.config import ConfigError
from tests.conftest import REPO_ROOT
from pretextlab.train import run
from tests.conftest import FAST_RUN, compose_config

#: Jigsaw draws random numbers in every training AND validation step (tile offsets, grayscale,
#: permutation labels) and in the augmentation: a resumed run matches only if every random stream
#: (global RNGs, sampler order) continues exactly where the checkpoint left it.
RESUMABLE = [
    "task=jigsaw",
    "data.source.num_train=64",
    "data.source.num_test=32",
    "data.batch_size=16",          # 4 steps per epoch
    "data.eval_batch_size=16",     # 2 validation batches per epoch
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "task.panel_images=0",
]
EPOCHS, STEPS_PER_EPOCH = 2, 4


class CrashDuringEpoch(L.Callback):
    """Stands in for a killed process: raises at a given (epoch, batch), after that epoch's first steps."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated kill")


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def _with_crash(cfg: Any, epoch: int, batch: int) -> Any:
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": f"{__name__}.CrashDuringEpoch", "epoch": epoch, "batch": batch}
    return cfg


def test_a_run_killed_mid_epoch_and_resumed_ends_exactly_like_an_uninterrupted_one(make_config, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pretextlab.train")
    uninterrupted_dir, resumed_dir = tmp_path / "uninterrupted", tmp_path / "resumed"

    # resume=auto (the default) on a directory without a checkpoint: a fresh run from step 0.
    uninterrupted = run(make_config(RESUMABLE, run_dir=uninterrupted_dir))
    assert "resuming from" not in caplog.text
    assert uninterrupted["steps"] == EPOCHS * STEPS_PER_EPOCH

    # Killed during the last epoch, after two of its steps: last.ckpt holds the end of the one before.
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(_with_crash(make_config(RESUMABLE, run_dir=resumed_dir), epoch=EPOCHS - 1, batch=2))
    killed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (killed["epoch"], killed["global_step"]) == (EPOCHS - 2, (EPOCHS - 1) * STEPS_PER_EPOCH)
    assert not (resumed_dir / "results.json").exists()

    # The same command again: resume=auto continues from last.ckpt.
    caplog.clear()
    resumed = run(make_config(RESUMABLE, run_dir=resumed_dir))
    assert f"resuming from {resumed_dir / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert resumed["status"] == "ok"
    assert (resumed["epochs"], resumed["steps"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)

    expected, actual = _final_weights(uninterrupted_dir), _final_weights(resumed_dir)
    assert expected.keys() == actual.keys()
    differing = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differing, f"weights differ after resuming: {differing}"
    # Metrics of the last epoch (pretext and online probe, train and val) and the downstream probe.
    assert resumed["pretext"] == pytest.approx(uninterrupted["pretext"], abs=1e-6)
    assert resumed["online_probe"] == pytest.approx(uninterrupted["online_probe"], abs=1e-6)
    assert resumed["eval"]["linear"]["top1"] == pytest.approx(uninterrupted["eval"]["linear"]["top1"], abs=1e-6)
    assert resumed["eval"]["linear"]["val_top1"] == pytest.approx(uninterrupted["eval"]["linear"]["val_top1"],
                                                                  abs=1e-6)


def test_resume_from_a_missing_checkpoint_fails_before_training(make_config, tmp_path):
    missing = tmp_path / "nowhere" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"resume=.*nowhere/last.ckpt.*no such checkpoint; use resume=auto"):
        run(make_config(RESUMABLE + [f"resume={missing}"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_job_killed_during_evaluation_keeps_its_pretext_metrics_when_resumed(make_config, tmp_path):
    quick = [*RESUMABLE, "task=rotation", "trainer.max_epochs=1", "eval=none"]
    finished = run(make_config(quick))
    (tmp_path / "run" / "results.json").unlink()  # as if killed after training, before results.json
    resumed = run(make_config(quick))
    assert resumed["pretext"] == pytest.approx(finished["pretext"], abs=1e-6)
    assert resumed["online_probe"] == pytest.approx(finished["online_probe"], abs=1e-6)


# -- resume= from somewhere else: only this run's checkpoints, read safely -----------------------------
FAST = [*FAST_RUN, "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def seed0_run(tmp_path_factory) -> Path:
    """A finished 2-epoch rotation run with seed 0 (its checkpoints are what the tests resume from)."""
    run_dir = tmp_path_factory.mktemp("seed0") / "run"
    assert run(compose_config(FAST, run_dir, tiny=False))["status"] == "ok"
    return run_dir


def test_a_checkpoint_of_another_seed_or_task_is_refused_unless_asked_and_then_recorded(make_config, seed0_run,
                                                                                       tmp_path):
    foreign = seed0_run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"was written by another run: seed 0 \(config: 5\); resume from a "
                                              r"checkpoint of this run, or pass resume_foreign=true"):
        run(make_config([*FAST, "seed=5", f"resume={foreign}"], tiny=False))
    assert not (tmp_path / "run" / "results.json").exists()

    accepted = run(make_config([*FAST, "seed=5", f"resume={foreign}", "resume_foreign=true"], tiny=False))
    assert accepted["status"] == "ok" and accepted["seed"] == 5
    record = json.loads((tmp_path / "run" / "results.json").read_text())["resumed_from"]
    assert record["checkpoint"] == str(foreign)
    assert record["foreign"] == {"seed": {"checkpoint": 0, "config": 5}}

    # Another task: refused in one line, and never Lightning's "Missing key(s)" even when accepted.
    jigsaw = [*FAST, "task=jigsaw", f"resume={foreign}"]
    with pytest.raises(CheckpointError, match=r"task 'rotation' \(config: 'jigsaw'\)"):
        run(make_config(jigsaw, tiny=False, run_dir=tmp_path / "jigsaw"))
    with pytest.raises(CheckpointError, match=r"its weights do not fit task jigsaw on backbone convnet \(missing "):
        run(make_config([*jigsaw, "resume_foreign=true"], tiny=False, run_dir=tmp_path / "jigsaw"))


def test_resume_from_a_directory_or_a_file_that_is_not_a_checkpoint_is_one_line(seed0_run, tmp_path):
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("hello\n")
    cases = {
        "dir": (seed0_run, f"{seed0_run} is a directory, not a checkpoint file; did you mean "
                           f"{seed0_run / 'checkpoints' / 'last.ckpt'}?"),
        "text": (not_a_checkpoint, f"{not_a_checkpoint} is not a complete PyTorch checkpoint (truncated, damaged, "
                                   "or another kind of file)"),
    }
    env = {k: v for k, v in os.environ.items() if k != "PRETEXTLAB_TRACEBACK"}
    # Both commands at once: the interpreter start-up dominates their time.
    processes = {name: subprocess.Popen(
        [sys.executable, "-m", "pretextlab.train", *FAST_RUN, f"resume={path}", f"hydra.run.dir={tmp_path / name}"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (path, _) in cases.items()}
    for name, process in processes.items():
        _, err = process.communicate(timeout=300)
        path, message = cases[name]
        assert process.returncode == 2, err[-3000:]
        assert err.splitlines()[0] == f"pretextlab: error: resume={str(path)!r}: {message}", err[-3000:]
        assert "Traceback" not in err


def test_a_truncated_last_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous_good_one(
        make_config, tmp_path, caplog):
    keep_all = [*FAST, "callbacks.checkpoint.save_top_k=-1"]
    run_dir = tmp_path / "run"
    finished = run(make_config(keep_all, tiny=False))
    (run_dir / "results.json").unlink()  # as if the job died before writing it
    last = run_dir / "checkpoints" / "last.ckpt"
    target = last.resolve()
    assert target.name == "epoch=1-step=4.ckpt"
    with open(target, "r+b") as handle:  # a crash or a full disk while writing
        handle.truncate(target.stat().st_size // 2)

    caplog.set_level(logging.INFO, logger="pretextlab")
    resumed = run(make_config(keep_all, tiny=False))
    assert f"cannot resume from {last}: {last} is not a complete PyTorch checkpoint" in caplog.text
    assert f"set it aside as {target}.unreadable" in caplog.text
    assert f"resuming from {run_dir / 'checkpoints' / 'epoch=0-step=2.ckpt'}" in caplog.text
    assert resumed["status"] == "ok"
    assert (resumed["epochs"], resumed["steps"]) == (finished["epochs"], finished["steps"]) == (2, 4)
    assert resumed["resumed_from"]["global_step"] == 2
    assert (target.parent / (target.name + ".unreadable")).exists()
    assert read_checkpoint(last)["global_step"] == 4  # last.ckpt is whole again


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: stands in for any code a crafted checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_checkpoint_never_runs_its_code_even_when_the_environment_forces_full_unpickling(
        make_config, seed0_run, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    crafted = torch.load(seed0_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    crafted["extra"] = _Payload(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(crafted, path)
    assert not marker.exists()

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # set by some clusters and notebooks
    with pytest.raises(CheckpointError, match=r"crafted.ckpt holds objects other than tensors and plain values "
                                              r"\(io.open\), so it was not loaded; if you trust its origin, pass "
                                              r"trust_checkpoint=true"):
        run(make_config([*FAST, f"resume={path}"], tiny=False))
    assert not marker.exists()
    assert not (tmp_path / "run" / "results.json").exists()


def test_resuming_keeps_the_earlier_epochs_rows_in_metrics_csv(make_config, tmp_path):
    with_csv = [*FAST, "logger=csv"]
    uninterrupted = tmp_path / "uninterrupted"
    run(make_config(with_csv, tiny=False, run_dir=uninterrupted))
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated kill"):  # during epoch 1, after its first step
        run(_with_crash(make_config(with_csv, tiny=False, run_dir=resumed_dir), epoch=1, batch=1))
    run(make_config(with_csv, tiny=False, run_dir=resumed_dir))

    def rows(run_dir: Path) -> list[tuple[str, str, tuple[str, ...]]]:
        with (run_dir / "csv" / "metrics.csv").open() as handle:
            return sorted((r["epoch"], r["step"], tuple(sorted(k for k, v in r.items() if v and k not in
                                                               ("epoch", "step", "throughput/images_per_sec"))))
                          for r in csv.DictReader(handle))

    expected = rows(uninterrupted)
    assert ("0", "0", ("pretext/train_acc_step", "pretext/train_loss_step")) in expected
    assert rows(resumed_dir) == expected  # epoch 0's rows kept, epoch 1's once, the results row once
