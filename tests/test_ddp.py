"""Real 2-process DDP on CPU (gloo): it runs, it computes what one process computes, and inside a
Hydra multirun (the real ``ddp`` strategy, whose extra process re-runs the command line) every
process agrees on each job: skips, failures on one rank, the sweep going on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from pretextlab.config import compose_train
from tests.conftest import REPO_ROOT
from pretextlab.data.datamodule import GlobalBatchSampler
from pretextlab.distributed import STORE_ENV, raise_if_another_rank_failed, uses_extra_processes
from pretextlab.train import resolved_config, run

ROOT = REPO_ROOT

# Augmentation off so that both runs see bit-identical inputs; everything else is the real config.
SAME_INPUTS = ["data.crop_padding=0", "data.horizontal_flip=false",
               "trainer.deterministic=true", "task=rotation", "data.source.num_train=256", "trainer.max_epochs=1",
               "task.online_probe=false"]


def test_global_batches_are_identical_for_any_number_of_processes():
    single = list(GlobalBatchSampler(100, batch_size=20, world_size=1, seed=3))
    ranks = [list(GlobalBatchSampler(100, batch_size=10, world_size=2, rank=r, seed=3)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
    for step, global_batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == global_batch
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(10, batch_size=8, world_size=2)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(make_config, tmp_path):
    one = run(make_config(SAME_INPUTS + ["trainer=cpu", "data.batch_size=64"], run_dir=tmp_path / "one"))
    two = run(make_config(SAME_INPUTS + ["trainer=ddp_cpu", "data.batch_size=32"], run_dir=tmp_path / "two"))
    assert one["status"] == two["status"] == "ok"
    assert one["steps"] == two["steps"] == 4  # 256 images / global batch 64, on both
    # Same global batches and averaged gradients. BatchNorm statistics are per process on CPU
    # (SyncBatchNorm needs CUDA), so the runs agree closely rather than bit for bit.
    assert two["pretext"]["val_loss"] == pytest.approx(one["pretext"]["val_loss"], rel=2e-2)
    assert abs(two["eval"]["linear"]["top1"] - one["eval"]["linear"]["top1"]) <= 0.05
    one_weights = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    two_weights = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert one_weights.keys() == two_weights.keys()
    for key, value in one_weights.items():
        # BN running statistics come from rank 0's half batch under DDP: compare learned weights.
        if value.is_floating_point() and "running_" not in key:
            assert torch.allclose(value, two_weights[key], atol=3e-3, rtol=1e-2), key


@pytest.mark.parametrize(("overrides", "expected"), [
    (["trainer=ddp"], True),  # Lightning's script launcher: extra processes re-run the command line
    (["trainer=ddp", "trainer.devices=1"], False),
    (["trainer=ddp", "trainer.strategy=ddp_spawn"], False),  # workers run only fit, never the sweep
    (["trainer=ddp_cpu"], False),
    (["trainer=gpu", "trainer.devices=2"], True),  # strategy auto on 2 devices is ddp
    (["trainer=cpu"], False),
])
def test_which_trainers_start_processes_that_re_run_the_sweep(overrides: list[str], expected: bool) -> None:
    assert uses_extra_processes(compose_train(overrides).trainer) is expected


def test_coordination_is_inert_outside_a_multirun() -> None:
    raise_if_another_rank_failed()  # no job started: nothing to wait for


class FailOnRank(Callback):
    """Test fault, added with ``+callbacks.fault=...``: a task's first training batch raises on one rank only."""

    def __init__(self, task: str, failures: dict[str, int]) -> None:
        self.rank = failures.get(task)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_rank == self.rank:
            raise RuntimeError(f"injected failure on rank {self.rank}")


#: Two CPU processes of the real ``ddp`` strategy (Lightning re-runs the command line) on tiny jobs.
DDP_SWEEP_JOB = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
    "trainer.sync_batchnorm=false", "trainer.benchmark=false", "trainer.strategy.timeout.seconds=300",
    "data.source.num_train=128", "data.source.num_test=64", "data.batch_size=32", "data.eval_batch_size=64",
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "task.panel_images=0", "eval=none", "logger=none",
    "+callbacks.fault._target_=tests.test_ddp.FailOnRank", "+callbacks.fault.task=${task.name}",
]


def _run_sweep(sweep_dir: Path, overrides: list[str], timeout: float) -> tuple[int, str, float]:
    """A multirun in its own process group, killed whole on timeout (no orphaned DDP process)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop(STORE_ENV, None)
    command = [sys.executable, "-m", "pretextlab.train", "-m", *overrides, *DDP_SWEEP_JOB,
               f"hydra.sweep.dir={sweep_dir}"]
    started = time.perf_counter()
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"the DDP sweep hung (killed after {timeout:.0f} s):\n{output[-4000:]}")
    return process.returncode, output, time.perf_counter() - started


def _finished_results(sweep_dir: Path, job: str, overrides: list[str]) -> dict[str, Any]:
    """What a finished earlier run of this job left: status ok and the job's own resolved config."""
    cfg = compose_train([*overrides, *DDP_SWEEP_JOB])
    with open_dict(cfg):
        cfg.paths.run_dir = str(sweep_dir / job)
        cfg.callbacks.fault.task = cfg.task.name  # ${task.name}, as the job resolves it
    return {"status": "ok", "config": resolved_config(cfg), "marker": "finished earlier"}


def test_ddp_sweep_agrees_on_skips_ends_a_failed_job_on_every_rank_and_goes_on(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "0_rotation").mkdir(parents=True)
    failures = "+callbacks.fault.failures={jigsaw:1,context:0}"  # jigsaw fails on rank 1 only, context on rank 0
    finished = _finished_results(sweep_dir, "0_rotation", ["task=rotation", failures])
    (sweep_dir / "0_rotation" / "results.json").write_text(json.dumps(finished))

    code, output, seconds = _run_sweep(sweep_dir, ["task=rotation,jigsaw,context,supervised", failures],
                                       timeout=480)

    assert code == 0, output[-4000:]
    results = {path.parent.name: json.loads(path.read_text()) for path in sweep_dir.glob("*/results.json")}
    assert set(results) == {"0_rotation", "1_jigsaw", "2_context", "3_supervised"}, output[-4000:]
    # job 0 was finished: skipped on rank 0 before any follower existed, and by the follower too
    assert results["0_rotation"] == finished
    assert "skipping the job" in (sweep_dir / "0_rotation" / "train_ddp_process_1.log").read_text()
    # job 1 raised on rank 1 only: it ended on both ranks, recorded once, by rank 0, naming rank 1
    assert results["1_jigsaw"]["status"] == "failed: rank 1 failed: RuntimeError: injected failure on rank 1"
    # job 2 raised on rank 0 only: rank 1, blocked in a collective, was released and ended the job too
    assert results["2_context"]["status"] == "failed: injected failure on rank 0"
    assert "job failed" in (sweep_dir / "2_context" / "train_ddp_process_1.log").read_text()
    # job 3 ran on both ranks, in a fresh process group, after the failures
    assert results["3_supervised"]["status"] == "ok", results["3_supervised"]
    assert results["3_supervised"]["steps"] == 2  # 128 images / (32 per process x 2 processes)
    # one sweep directory (the follower used rank 0's), whose multirun.yaml is rank 0's
    assert [path.name for path in tmp_path.iterdir()] == ["sweep"]
    assert "train_ddp_process" not in (sweep_dir / "multirun.yaml").read_text()
    print(f"DDP sweep of 4 jobs (skipped, failed on rank 1, failed on rank 0, ok): {seconds:.1f} s")
