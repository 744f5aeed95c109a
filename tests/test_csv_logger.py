"""The CSV logger's metrics.csv holds a run's whole history: across a resume, and under ddp_spawn."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from pretextlab.loggers import CSVLogger
from tests.conftest import FAST_RUN


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_a_new_writer_keeps_earlier_rows_and_supersedes_the_steps_it_logs_again(tmp_path):
    first = CSVLogger(tmp_path, name="csv", version="")
    for step in range(4):
        first.log_metrics({"loss": 1.0 - step / 10}, step=step)
    first.save()
    # A second process (a resumed attempt) continues from step 2, and logs a new key.
    second = CSVLogger(tmp_path, name="csv", version="")
    second.log_metrics({"loss": 0.5}, step=2)
    second.log_metrics({"loss": 0.4, "acc": 0.9}, step=3)
    second.save()
    second.log_metrics({"wall_time/total": 12.0}, step=4)
    second.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [(r["step"], r["loss"], r["acc"], r["wall_time/total"]) for r in rows] == [
        ("0", "1.0", "", ""), ("1", "0.9", "", ""), ("2", "0.5", "", ""), ("3", "0.4", "0.9", ""),
        ("4", "", "", "12.0")]


@pytest.mark.timeout(400)
def test_ddp_cpu_with_the_default_csv_logger_exits_0_and_writes_every_row(tmp_path):
    run_dir = tmp_path / "run"
    # The default logger (csv): FAST_RUN turns it off, so it is put back last.
    env = {k: v for k, v in os.environ.items() if k != "PRETEXTLAB_TRACEBACK"}
    done = subprocess.run([sys.executable, "-m", "pretextlab.train", *FAST_RUN, "trainer=ddp_cpu", "data.batch_size=32",
                           "logger=csv", f"hydra.run.dir={run_dir}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=360, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(run_dir / "csv" / "metrics.csv")
    # The workers' training rows (2 steps of a global batch of 64) and the main process's results row.
    assert [r["step"] for r in rows if r.get("pretext/train_loss_step")] == ["0", "1"]
    assert any(r.get("pretext/val_loss") for r in rows)
    assert [r["step"] for r in rows if r.get("wall_time/total")] == ["2"]
    # The job ran, so pretextlab wrote Hydra's record of it (Hydra itself no longer does: rundir.py).
    assert "- trainer=ddp_cpu" in (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
    assert "seed: 0" in (run_dir / ".hydra" / "config.yaml").read_text().splitlines()
    assert (run_dir / ".hydra" / "hydra.yaml").read_text().startswith("hydra:\n")
