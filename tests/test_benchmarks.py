"""The GPU acceptance run (benchmarks/gpu_check.sh, with benchmark 4 and the step-overhead benchmark)
stays runnable: its CPU dry run goes through every step and writes one report with every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


STEPS = ["environment", "jpeg_folder", "streaming_bf16", "streaming_16mixed", "on_device", "compile", "ddp",
         "bench_end_to_end", "bench_step_overhead"]


def test_gpu_check_keeps_its_time_limit_and_reports_every_step(tmp_path: Path) -> None:
    """The hard limit, in the suite's time: a step still running at the limit is killed whole, the
    steps after it are skipped, and the one report names every step."""
    report_file = tmp_path / "report.json"
    started = time.monotonic()
    completed = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--report", str(report_file)],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_LIMIT_S": "20"}, capture_output=True,
        text=True, timeout=120, check=False,
    )
    elapsed = time.monotonic() - started
    report = json.loads(report_file.read_text())
    statuses = {step["name"]: step["status"] for step in report["steps"]}
    assert list(statuses) == STEPS, statuses
    assert statuses["environment"] == "ok"
    assert any(status.startswith("failed: timed out after") for status in statuses.values()), statuses
    assert statuses["bench_step_overhead"] == "skipped: the 20 s limit was reached"
    assert report["failures"] and completed.returncode == 1
    assert elapsed < 20 + 15  # the limit, plus interpreter start-up and the last report write


@pytest.mark.slow  # every step at tiny sizes: several minutes on two CPU cores
def test_gpu_check_dry_run_runs_every_step_on_cpu_and_writes_one_report(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    completed = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--report", str(report_file)],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=960,
        check=False,
    )
    report = json.loads(report_file.read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == STEPS
    failed = {name: step["status"] for name, step in steps.items() if not step["status"].startswith("ok")}
    assert not failed, (failed, completed.stdout[-3000:])
    assert report["failures"] == []
    assert completed.returncode == 0
    # every figure the run exists for is in the report
    for name in ["on_device", "compile", "ddp", "streaming_bf16", "streaming_16mixed"]:
        jobs = {key: job for key, job in steps[name]["figures"].items() if isinstance(job, dict)}
        assert jobs and all(job["status"] == "ok" for job in jobs.values()), steps[name]
        for job_name, job in jobs.items():
            # trainer.max_steps=2 counts optimizer steps: inpainting's generator and adversary step
            # once each per batch, so it trains one batch
            assert job["steps"] == (1 if job_name.endswith("_inpainting") else 2), (job_name, job)
    assert set(steps["streaming_bf16"]["figures"]) >= {"convnet/4_inpainting", "mae/0_mae"}
    assert len(steps["on_device"]["figures"]) == 2 and steps["on_device"]["figures"]["0_rotation"]["images_per_s"] > 0
    # benchmark 4: rotation trains on all four rotations of every image; jigsaw on 3x3 tiles of 8 px at 32 px
    end_to_end = {row["task"]: row for row in steps["bench_end_to_end"]["figures"]["figures"]}
    assert end_to_end["rotation"]["shapes"] == [[64, 3, 32, 32]]
    # (8 px tiles resized to 16 px: tile_input_size=auto keeps every convnet stage map >= 2 px)
    assert end_to_end["jigsaw"]["shapes"] == [[144, 3, 16, 16]]
    for row in end_to_end.values():
        assert row["end_to_end"] > 0 and row["ceiling"] > 0
        assert row["ratio"] == row["end_to_end"] / row["ceiling"]
    assert set(steps["bench_step_overhead"]["figures"]) == {"rotation", "jigsaw"}
    assert steps["environment"]["status"] == "ok" and report["environment"]["torch"]
    assert report["elapsed_s"] < report["limit_s"]
