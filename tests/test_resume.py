"""Checkpoints and resume: a run killed mid-training and resumed ends exactly where an uninterrupted one does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from pretextlab.config import ConfigError
from pretextlab.train import run

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
