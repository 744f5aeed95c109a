"""Faults during a run: a NaN loss, a crash mid-write, an unwritable or already-used output directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.strategies.strategy import Strategy
from omegaconf import open_dict

import pretextlab.io as pio
from pretextlab.checkpoints import read_checkpoint
from pretextlab.config import ConfigError, compose_train
from pretextlab.tasks import PretextOutput, RotationTask
from tests.conftest import FAST_RUN
from pretextlab.train import ExistingResultsError, _record_failure, main, run

#: Two steps per epoch, no offline evaluation: a whole run takes a few seconds.
FAST = FAST_RUN


def _fast(make_config, overrides=(), run_dir: Path | None = None):
    return make_config(FAST + list(overrides), tiny=False, run_dir=run_dir)


# -- numerical faults ---------------------------------------------------------------------------
def test_nan_loss_stops_the_run_keeps_the_last_good_checkpoint_and_records_the_failure(tmp_path, monkeypatch, capsys):
    original = RotationTask.pretext_step

    def poisoned(self, images, labels):
        output = original(self, images, labels)
        if self.global_step >= 3:  # the second step of the second epoch
            return PretextOutput(output.loss * float("nan"), output.metrics, output.terms, output.clean_features)
        return output

    monkeypatch.setattr(RotationTask, "pretext_step", poisoned)
    # Through the CLI entry point itself (Hydra passes a ready config straight through), so the
    # one-line message and the recorded failure are what a user would get.
    # save_top_k=1: with Lightning 2.6, save_top_k=0 + save_last=true writes last.ckpt only when
    # training ends, never after an epoch (conf/train.yaml needs the same change).
    cfg = compose_train(FAST + ["trainer.max_epochs=2", "callbacks.checkpoint.save_top_k=1"],
                        return_hydra_config=True)
    run_dir = tmp_path / "run"
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)

    with pytest.raises(SystemExit) as exited:
        main(cfg)
    assert exited.value.code == 2
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line.startswith("pretextlab: error: task RotationTask: loss term 'loss' is nan at global step 3")

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"].startswith("failed: non-finite loss: task RotationTask: loss term 'loss' is nan")
    assert results["error_type"] == "NonFiniteLossError"

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2  # the end of the first, healthy epoch
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


# -- atomic outputs -----------------------------------------------------------------------------
def test_a_crash_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    pio.atomic_write_json(target, {"status": "ok", "value": 1})
    old = target.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(pio.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        pio.atomic_write_json(target, {"status": "ok", "value": 2})
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_a_writer_failing_halfway_leaves_the_old_file(tmp_path):
    target = tmp_path / "table.png"
    pio.atomic_write_bytes(target, b"old complete table")
    with pytest.raises(RuntimeError), pio.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a ta")
        raise RuntimeError("plotting failed")
    assert target.read_bytes() == b"old complete table"
    assert [p.name for p in tmp_path.iterdir()] == ["table.png"]


_WRITER = """
import sys
from pretextlab.io import atomic_write_json
target, i = sys.argv[1], 0
print("ready", flush=True)
while True:
    atomic_write_json(target, {"version": i, "payload": [i] * 200_000})
    i += 1
"""


def test_a_process_killed_at_any_moment_leaves_a_complete_file(tmp_path):
    target = tmp_path / "results.json"
    versions = set()
    for delay in (0.3, 0.55, 0.8):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        # The kill lands `delay` after the first complete file, however slow the machine is today.
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if target.exists():  # killed before the very first rename: no file at all is also fine
            content = json.loads(target.read_text())
            assert content["payload"] == [content["version"]] * 200_000
            versions.add(content["version"])
    assert versions, "the writer never finished one file; lengthen the delays"


def test_output_files_get_ordinary_permissions(tmp_path):
    target = tmp_path / "results.json"
    pio.atomic_write_json(target, {})
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


# -- output directories -------------------------------------------------------------------------
def test_an_output_directory_under_a_file_fails_before_training(make_config, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"output directory .*file.txt/run cannot be created: .*file.txt is a file"):
        run(_fast(make_config, run_dir=tmp_path / "file.txt" / "run"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; covered by the path-under-a-file test")
def test_a_read_only_output_directory_fails_before_training(make_config, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"cannot be written"):
            run(_fast(make_config, run_dir=locked / "run"))
    finally:
        locked.chmod(0o700)


def test_finished_results_are_never_overwritten_unless_asked(make_config, tmp_path):
    run_dir = tmp_path / "run"
    first = run(_fast(make_config))
    assert first["status"] == "ok"
    finished = (run_dir / "results.json").read_bytes()

    # The same config again: the job is skipped and the finished results come back unchanged.
    again = run(_fast(make_config))
    assert again == first
    assert (run_dir / "results.json").read_bytes() == finished

    # A different config: refused, and (as in main) nothing is recorded over the finished results.
    different = _fast(make_config, ["seed=1"])
    with pytest.raises(ExistingResultsError, match=r"results.json holds finished results of a different config; "
                                                   r"pass overwrite=true"):
        run(different)
    _record_failure(different, ExistingResultsError("refused"))
    assert (run_dir / "results.json").read_bytes() == finished

    # Asked explicitly: replaced.
    replaced = run(_fast(make_config, ["seed=1", "overwrite=true", "resume=never"]))
    assert replaced["seed"] == 1
    assert json.loads((run_dir / "results.json").read_text())["seed"] == 1


# -- checkpoints written so that a crash never leaves the run without a complete one ----------------
class SimulatedKill(BaseException):
    """A SIGKILL at this very instant: nothing after it runs (not even ``except Exception`` handlers)."""


class CrashInSecondEpoch(L.Callback):
    """Arms ``CRASH`` (a fault injector) once the first epoch's checkpoint is complete."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1 and CRASH is not None:
            CRASH()


CRASH = None


@pytest.mark.parametrize("moment", ["while writing", "while linking last.ckpt", "after removing the previous one"])
def test_a_crash_at_any_moment_of_saving_a_checkpoint_leaves_a_complete_last_checkpoint(make_config, tmp_path,
                                                                                       monkeypatch, moment):
    original_save, original_remove = torch.save, Strategy.remove_checkpoint

    def save_half_then_die(obj, f, *args, **kwargs):
        original_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            with open(f, "r+b") as handle:
                handle.truncate(os.path.getsize(f) // 2)
        raise SimulatedKill("killed half-way through writing a checkpoint")

    def die_while_linking(*args, **kwargs):
        raise SimulatedKill("killed while re-pointing last.ckpt")

    def remove_then_die(self, filepath):
        original_remove(self, filepath)
        raise SimulatedKill(f"killed right after removing {filepath}")

    def arm() -> None:
        if moment == "while writing":
            monkeypatch.setattr(torch, "save", save_half_then_die)
        elif moment == "while linking last.ckpt":
            monkeypatch.setattr(os, "symlink", die_while_linking)
        else:
            monkeypatch.setattr(Strategy, "remove_checkpoint", remove_then_die)

    monkeypatch.setattr(sys.modules[__name__], "CRASH", arm)
    cfg = _fast(make_config, ["trainer.max_epochs=2"])
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": f"{__name__}.CrashInSecondEpoch"}
    with pytest.raises(SimulatedKill):
        run(cfg)
    monkeypatch.undo()

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.exists(), f"no last.ckpt after a crash {moment}: {sorted(p.name for p in last.parent.iterdir())}"
    assert read_checkpoint(last)["global_step"] in (2, 4)
    for path in last.parent.glob("*.ckpt"):  # no damaged checkpoint under a checkpoint's name
        read_checkpoint(path)
    # The same command again resumes and finishes.
    assert run(_fast(make_config, ["trainer.max_epochs=2"]))["status"] == "ok"
