"""Sweeps that survive reality, through the real command line (Hydra multirun in a subprocess).

A job that crashes does not stop the sweep and shows up as a "failed" row; re-running a finished
sweep's command runs no job again; multirun.sh goes from the sweep to the table.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.conftest import FAST_RUN

ROOT = REPO_ROOT
#: Every job in a few seconds: 4 steps of 32 images, a 2-epoch one-lr linear probe, no logger.
TINY_JOB = [
    "data.source.num_train=128",
    "data.source.num_test=64",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "eval.protocols.linear.epochs=2",
    "eval.protocols.linear.lrs=[0.01]",
    "eval.protocols.linear.weight_decays=[0.0]",
    "logger=none",
]
#: table.csv's column of a row's difference to the random init of its own backbone (points).
DELTA = "linear_best_minus_own_random_init_pct_mean"
SKIP_LINE = "already holds finished results for this config: skipping the job"


def _environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PRETEXTLAB_SWEEP_ID"}
    env.update({"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **extra})
    return env


def _run(command: list[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=ROOT, env=_environment(**env), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{command[:4]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "pretextlab.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}", *TINY_JOB])


def _table(sweep_dir: Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "pretextlab.table", str(sweep_dir)])


def _results(sweep_dir: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/results.json"))}


def _table_rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with (sweep_dir / "table.csv").open() as handle:
        return {row["task"]: row for row in csv.DictReader(handle)}


@pytest.mark.timeout(300)
def test_a_job_that_diverges_does_not_stop_the_sweep_and_becomes_a_failed_row(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # The first job diverges (lr 1e30: NaN at its second step); the second must still run. `++`
    # because task=none has no optimizer to override: it gets an unused one and never trains.
    _sweep(sweep_dir, "task=rotation,none", "++task.optimizer.lr=1e30")

    results = _results(sweep_dir)
    assert set(results) == {"0_rotation", "1_none"}
    failed, finished = results["0_rotation"], results["1_none"]
    assert failed["status"].startswith("failed: non-finite loss: task RotationTask: loss term 'loss' is nan")
    assert failed["error_type"] == "NonFiniteLossError"
    assert finished["status"] == "ok"
    assert finished["eval"]["linear"]["top1"] > 0

    printed = _table(sweep_dir).stdout
    rows = _table_rows(sweep_dir)
    assert set(rows) == {"none", "rotation"}
    assert rows["none"]["status"] == "ok"
    assert float(rows["none"]["linear_best_stage_top1_pct_mean"]) == pytest.approx(
        100 * finished["eval"]["linear"]["top1"], abs=0.01)
    first_line = failed["status"].splitlines()[0]
    assert rows["rotation"]["status"] == first_line
    assert rows["rotation"]["linear_best_stage_top1_pct_mean"] == ""  # a failed job is never a number
    markdown = (sweep_dir / "table.md").read_text()
    assert markdown == printed
    assert f"| {first_line} |" in markdown


def _bootstrap_is_current(venv: Path) -> bool:
    """multirun.sh sources scripts/bootstrap.sh, which reinstalls when pyproject.toml changed: never in a test."""
    stamp = venv / ".pretextlab-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return stamp.exists() and stamp.read_text().strip() == wanted


@pytest.mark.timeout(300)
def test_multirun_sh_builds_the_table_and_rerunning_it_runs_no_job_again(tmp_path):
    venv = Path(sys.executable).parent.parent
    if not _bootstrap_is_current(venv):
        pytest.skip(f"{venv} was not installed by scripts/bootstrap.sh for this pyproject.toml "
                    "(multirun.sh would reinstall it)")
    sweep_dir = tmp_path / "sweep"
    command = ["bash", str(ROOT / "multirun.sh"), *TINY_JOB]
    env = {"TASKS": "none,rotation,colorization", "VIT_TASKS": "", "SWEEP_DIR": str(sweep_dir),
           "PRETEXTLAB_VENV": str(venv)}

    first = _run(command, **env)
    assert f"[multirun] sweep directory: {sweep_dir}" in first.stderr
    results = _results(sweep_dir)
    # Colorization's 1-channel backbone reads the L channel: the sweep adds that backbone's random init.
    assert set(results) == {"0_none", "1_rotation", "2_colorization", "0_none_1ch"}
    assert all(r["status"] == "ok" for r in results.values())
    assert results["0_none_1ch"]["config"]["backbone"]["in_channels"] == 1
    assert results["0_none_1ch"]["task_info"]["input_kind"] == "lab_l"
    with (sweep_dir / "table.csv").open() as handle:
        rows = {row["task_label"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"random init", "random init, L channel", "rotation (1 ep × 128 img)",
                         "colorization (1 ep × 128 img)"}, list(rows)
    assert all(row["status"] == "ok" for row in rows.values())
    best = {name: 100 * r["eval"]["linear"]["top1"] for name, r in results.items()}
    assert float(rows["colorization (1 ep × 128 img)"][DELTA]) == pytest.approx(
        best["2_colorization"] - best["0_none_1ch"], abs=0.06)  # its own floor, never the RGB one
    assert float(rows["rotation (1 ep × 128 img)"][DELTA]) == pytest.approx(
        best["1_rotation"] - best["0_none"], abs=0.06)
    markdown = (sweep_dir / "table.md").read_text()
    assert "| random init | convnet | synthetic |" in markdown
    assert "| random init, L channel | convnet | synthetic |" in markdown
    assert "| rotation (1 ep × 128 img) | convnet | synthetic |" in markdown  # the label carries the budget

    # The same command again: both jobs are found finished (same resolved config) and skipped.
    outputs = sorted(p for p in sweep_dir.glob("*_*/**/*") if p.is_file() and ".hydra" not in p.parts
                     and not p.name.endswith(".log"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}
    assert any(p.suffix == ".ckpt" for p in before) and any(p.name == "results.json" for p in before)
    second = _run(command, **env)
    log = second.stdout + second.stderr
    assert log.count(SKIP_LINE) == 4, log[-3000:]
    assert "resuming from" not in log
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}
    assert after == before, "re-running a finished sweep rewrote job outputs"
    assert sorted(p for p in sweep_dir.glob("*_*/**/*") if p.is_file() and ".hydra" not in p.parts
                  and not p.name.endswith(".log")) == outputs
    assert (sweep_dir / "table.md").read_text() == markdown


# -- sweeps that did not run every job say so ---------------------------------------------------------
#: A job in a few seconds: two steps of pretraining, no offline evaluation.
FAST_JOB = [o for o in FAST_RUN if not o.startswith("task=")]


def _finished_elsewhere(job_dir: Path) -> None:
    """A job directory holding finished results of another config, with its own Hydra record."""
    (job_dir / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (job_dir / ".hydra" / name).write_text(f"# the finished run's {name}\n")
    (job_dir / "results.json").write_text(json.dumps({"status": "ok", "task": job_dir.name.split("_")[1],
                                                      "config": {"trainer": {"max_epochs": 99}}}))


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".log")
            and p.name != "multirun.yaml"}


def _start(command: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(command, cwd=ROOT, env=_environment(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


REFUSED_LINE = ("pretextlab: error: 2 jobs of this sweep were not run: 0_rotation, 1_jigsaw hold finished results of "
                "a different config (pass overwrite=true to replace them, or choose another hydra.sweep.dir)")


@pytest.mark.timeout(300)
def test_a_sweep_whose_jobs_are_refused_ends_non_zero_naming_them_and_leaves_their_directories_as_they_were(
        tmp_path):
    sweep_dir = tmp_path / "sweep"
    for job in ("0_rotation", "1_jigsaw"):
        _finished_elsewhere(sweep_dir / job)
    before = _files(sweep_dir)
    done = _start([sys.executable, "-m", "pretextlab.train", "-m", "task=rotation,jigsaw",
                   f"hydra.sweep.dir={sweep_dir}", *FAST_JOB])
    out, err = done.communicate(timeout=240)
    assert done.returncode == 2, (out[-2000:], err[-2000:])
    assert err.splitlines()[-1] == REFUSED_LINE, err[-2000:]
    assert _files(sweep_dir) == before


@pytest.mark.timeout(300)
def test_multirun_sh_with_refused_jobs_exits_non_zero_and_does_not_print_the_old_table(tmp_path):
    venv = Path(sys.executable).parent.parent
    if not _bootstrap_is_current(venv):
        pytest.skip(f"{venv} was not installed by scripts/bootstrap.sh for this pyproject.toml")
    sweep_dir = tmp_path / "sweep"
    for job in ("1_rotation", "2_jigsaw"):  # multirun.sh puts the random-init row first: job 0 is task=none
        _finished_elsewhere(sweep_dir / job)
    (sweep_dir / "table.md").write_text("| the old table |\n")
    before = _files(sweep_dir)
    # task=none (the random-init row multirun.sh adds) has no task.panel_images to override
    fast_job = [o for o in FAST_JOB if not o.startswith("task.panel_images")]
    done = _start(["bash", str(ROOT / "multirun.sh"), *fast_job], TASKS="rotation,jigsaw", VIT_TASKS="",
                  SWEEP_DIR=str(sweep_dir), PRETEXTLAB_VENV=str(venv))
    out, err = done.communicate(timeout=240)
    assert done.returncode == 2, (out[-2000:], err[-2000:])
    assert REFUSED_LINE.replace("0_rotation, 1_jigsaw", "1_rotation, 2_jigsaw") in err.splitlines()
    assert "the old table" not in out + err
    assert err.splitlines()[-1] == f"[multirun] some jobs were not run or the sweep failed (exit 2): {sweep_dir}/table.md " \
                                   "was not rebuilt"
    after = {name: value for name, value in _files(sweep_dir).items() if not name.startswith("0_none/")}
    assert after == before  # the random-init job ran; the refused ones and the old table are untouched


@pytest.mark.timeout(300)
def test_a_job_another_sweep_is_running_is_skipped_and_the_sweep_says_so(tmp_path):
    from pretextlab.rundir import LOCK_FILE, JobLock

    sweep_dir = tmp_path / "sweep"
    other_sweep = JobLock(sweep_dir / "0_rotation")
    other_sweep.acquire()  # as a sweep started a moment earlier into the same directory would
    try:
        done = _start([sys.executable, "-m", "pretextlab.train", "-m", "task=rotation,jigsaw",
                       f"hydra.sweep.dir={sweep_dir}", *FAST_JOB])
        out, err = done.communicate(timeout=240)
    finally:
        other_sweep.release()
    assert done.returncode == 2, (out[-2000:], err[-2000:])
    assert err.splitlines()[-1] == ("pretextlab: error: 1 job of this sweep was not run: 0_rotation is being run by "
                                    "another process (run the command again once it has finished)"), err[-2000:]
    assert f"is being run by another process (pid {os.getpid()} on " in out + err
    # Nothing written (Hydra's job log aside), and the lock is gone.
    assert [p.name for p in (sweep_dir / "0_rotation").iterdir() if not p.name.endswith(".log")] == []
    assert json.loads((sweep_dir / "1_jigsaw" / "results.json").read_text())["status"] == "ok"
    assert not (sweep_dir / "1_jigsaw" / LOCK_FILE).exists()


@pytest.mark.timeout(400)
def test_two_sweeps_started_into_the_same_directory_at_once_run_every_job_once(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "pretextlab.train", "-m", "task=rotation,jigsaw", f"hydra.sweep.dir={sweep_dir}",
               *FAST_JOB]
    first, second = _start(command), _start(command)
    outputs = [process.communicate(timeout=360) for process in (first, second)]
    logs = [out + err for out, err in outputs]
    for job in ("0_rotation", "1_jigsaw"):
        started = sum(log.count(f"running the job in {sweep_dir / job} ") for log in logs)
        assert started == 1, f"{job} ran {started} times"
        assert json.loads((sweep_dir / job / "results.json").read_text())["status"] == "ok"
    for process, log in zip((first, second), logs):
        # A sweep that skipped a job another was running says so and ends non-zero; one that found
        # every job running or finished by the other skips them (same config) and ends 0.
        held = "is being run by another process" in log
        assert process.returncode == (2 if held else 0), log[-3000:]
