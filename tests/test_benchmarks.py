"""The GPU end-to-end benchmark stays runnable: a tiny CPU run gives figures for the right inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_end_to_end_benchmark_runs_on_cpu_and_records_the_backbone_inputs(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, "benchmarks/bench_end_to_end.py", "--device", "cpu", "--backbone", "convnet",
         "--precision", "32-true", "--batch", "16", "--steps", "2", "--warmup", "1", "--num-images", "64",
         "--json", str(figures_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = {row["task"]: row for row in json.loads(figures_file.read_text())["figures"]}
    assert set(figures) == {"rotation", "jigsaw"}
    # rotation trains on all four rotations of every image; jigsaw on 3x3 tiles of 8 px at 32 px
    assert figures["rotation"]["shapes"] == [[64, 3, 32, 32]]
    assert figures["jigsaw"]["shapes"] == [[144, 3, 8, 8]]
    for row in figures.values():
        assert row["end_to_end"] > 0 and row["ceiling"] > 0
        assert row["ratio"] == row["end_to_end"] / row["ceiling"]
