"""The run directory's life: overwrite replaces every output of the old run, a refused job leaves the
directory as it was, and a job another process holds is not run twice (pretextlab/rundir.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretextlab.checkpoints import read_checkpoint
from pretextlab.export.run import export_backbone
from pretextlab.rundir import LOCK_FILE, JobHeldError, JobLock, summary_line, NotRun
from pretextlab.train import run
from tests.conftest import FAST_RUN, REPO_ROOT

ROOT = REPO_ROOT


def _fast(make_config, overrides=(), run_dir: Path | None = None):
    return make_config(FAST_RUN + list(overrides), tiny=False, run_dir=run_dir)


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below ``folder`` (Hydra's job log aside) with its modification time and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".log")}


# -- defect 1: overwrite=true replaces everything later steps read ------------------------------------
def test_overwrite_replaces_the_old_runs_checkpoints_metrics_and_caches_and_export_ships_the_new_weights(
        make_config, tmp_path):
    run_dir = tmp_path / "run"
    first = run(_fast(make_config, ["logger=csv"]))
    assert first["status"] == "ok"
    # What later steps would read from the old run, beside its checkpoint and metrics.
    (run_dir / "eval_cache").mkdir()
    (run_dir / "eval_cache" / "features-old.pt").write_bytes(b"old features")
    (run_dir / "csv" / "panels").mkdir(parents=True, exist_ok=True)
    (run_dir / "csv" / "panels" / "old_epoch000.png").write_bytes(b"old panel")
    (run_dir / "notes.txt").write_text("a file pretextlab did not write stays")

    second = run(_fast(make_config, ["logger=csv", "seed=1", "overwrite=true"]))
    assert second["seed"] == 1

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["epoch=0-step=2.ckpt", "last.ckpt"], checkpoints  # no last-v1.ckpt beside last.ckpt
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["pretextlab_run"]["seed"] == 1
    assert not (run_dir / "eval_cache" / "features-old.pt").exists()
    assert not (run_dir / "csv" / "panels" / "old_epoch000.png").exists()
    assert (run_dir / "notes.txt").exists()
    steps = [line.split(",") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[1:]]
    assert len(steps) == len({tuple(row) for row in steps})  # the new run's rows only, once each

    weights = load_file(export_backbone(run_dir))
    new_backbone = {k[len("backbone."):]: v for k, v in last["state_dict"].items() if k.startswith("backbone.")}
    assert weights.keys() == new_backbone.keys()
    assert all(torch.equal(weights[k], new_backbone[k]) for k in weights)
    assert json.loads((run_dir / "results.json").read_text())["seed"] == 1


# -- defect 2 (single run): a refused run leaves the directory as it was ------------------------------
def test_a_refused_run_leaves_the_directory_and_its_hydra_record_as_they_were(make_config, tmp_path):
    run_dir = tmp_path / "run"
    run(_fast(make_config))
    hydra = run_dir / ".hydra"
    hydra.mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (hydra / name).write_text(f"# the finished run's {name}\n")
    before = _snapshot(run_dir)

    # A different config into the same directory, through the command line (Hydra writes .hydra/
    # before the task function runs unless told otherwise).
    done = subprocess.run([sys.executable, "-m", "pretextlab.train", *FAST_RUN, "seed=7", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[0].startswith(f"pretextlab: error: {run_dir / 'results.json'} holds finished "
                                                  "results of a different config; pass overwrite=true")
    assert "Traceback" not in done.stderr
    assert _snapshot(run_dir) == before


# -- defect 14: one job, one process ------------------------------------------------------------------
def test_a_job_held_by_another_process_is_not_run_and_says_who_holds_it(make_config, tmp_path):
    run_dir = tmp_path / "run"
    holder = JobLock(run_dir)
    holder.acquire()  # flock: a second open() of the file conflicts even inside one process
    try:
        with pytest.raises(JobHeldError, match=rf"{run_dir} is being run by another process \(pid {os.getpid()} on "):
            run(_fast(make_config))
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.release()
    assert not (run_dir / LOCK_FILE).exists()
    assert run(_fast(make_config))["status"] == "ok"  # free again
    assert not (run_dir / LOCK_FILE).exists()


def test_a_lock_file_left_by_a_dead_process_is_not_a_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text("pid 999999 on elsewhere since 2020-01-01 00:00:00\n")  # killed -9
    with JobLock(run_dir) as lock:
        assert f"pid {os.getpid()}" in lock.path.read_text()
    assert not (run_dir / LOCK_FILE).exists()


def test_the_sweep_summary_names_every_job_and_why():
    line = summary_line([NotRun("0_rotation", "refused", ""), NotRun("1_jigsaw", "refused", ""),
                         NotRun("2_context", "held", "")])
    assert line == ("3 jobs of this sweep were not run: 0_rotation, 1_jigsaw hold finished results of a different "
                    "config (pass overwrite=true to replace them, or choose another hydra.sweep.dir); 2_context is "
                    "being run by another process (run the command again once it has finished)")
