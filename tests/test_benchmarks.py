"""The GPU acceptance run (benchmarks/gpu_check.sh, with benchmark 4 and the step-overhead benchmark)
stays runnable: its CPU dry run goes through every step and writes one report with every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _streaming_source_present() -> bool:
    from pretextlab.config import compose_train

    try:
        compose_train(["data=imagefolder", "data.source.root=unused", "data.source.in_memory=false"])
    except Exception:
        return False
    return True


# A known gap, caught by this very check once streaming data landed: colorization reads its ab prior from
# the in-memory pretraining split, so it fails under data.source.in_memory=false (both streaming steps).
@pytest.mark.xfail(strict=True, reason="colorization cannot pretrain on streamed data yet (ab prior from the "
                   "in-memory split); open in issue 12")
def test_gpu_check_dry_run_runs_every_step_on_cpu_and_writes_one_report(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    completed = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--report", str(report_file)],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=960,
        check=False,
    )
    report = json.loads(report_file.read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == ["environment", "jpeg_folder", "streaming_bf16", "streaming_16mixed", "on_device",
                           "compile", "ddp", "bench_end_to_end", "bench_step_overhead"]
    streaming = ["streaming_bf16", "streaming_16mixed"]
    if not _streaming_source_present():
        # this checkout has no streaming source: one clear line each, and the run went on
        for name in streaming:
            assert steps[name]["status"] == ("failed: data.source.in_memory is not a key of data=imagefolder in "
                                             "this checkout: it has no streaming source yet, so the streaming runs "
                                             "cannot start")
        streaming = []
    failed = {name: step["status"] for name, step in steps.items() if not step["status"].startswith("ok")}
    assert set(failed) == {"streaming_bf16", "streaming_16mixed"} - set(streaming), (failed, completed.stdout[-3000:])
    assert report["failures"] == [f"{name}: {status}" for name, status in failed.items()]
    assert completed.returncode == (1 if failed else 0)
    # every figure the run exists for is in the report
    for name in ["on_device", "compile", "ddp", *streaming]:
        jobs = {key: job for key, job in steps[name]["figures"].items() if isinstance(job, dict)}
        assert jobs and all(job["status"] == "ok" and job["steps"] == 2 for job in jobs.values()), steps[name]
    assert len(steps["on_device"]["figures"]) == 2 and steps["on_device"]["figures"]["0_rotation"]["images_per_s"] > 0
    # benchmark 4: rotation trains on all four rotations of every image; jigsaw on 3x3 tiles of 8 px at 32 px
    end_to_end = {row["task"]: row for row in steps["bench_end_to_end"]["figures"]["figures"]}
    assert end_to_end["rotation"]["shapes"] == [[64, 3, 32, 32]]
    assert end_to_end["jigsaw"]["shapes"] == [[144, 3, 8, 8]]
    for row in end_to_end.values():
        assert row["end_to_end"] > 0 and row["ceiling"] > 0
        assert row["ratio"] == row["end_to_end"] / row["ceiling"]
    assert set(steps["bench_step_overhead"]["figures"]) == {"rotation", "jigsaw"}
    assert steps["environment"]["status"] == "ok" and report["environment"]["torch"]
    assert report["elapsed_s"] < report["limit_s"]
