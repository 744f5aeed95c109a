"""Transfer columns of the table (pretextlab.table_transfer) from hand-written results.json records."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pretextlab.table import build_table


def _write(path: Path, record: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(record))


def _pretraining(task: str, seed: int, top1: float) -> dict:
    return {"status": "ok", "task": task, "backbone": "convnet", "data": "synthetic", "seed": seed,
            "eval": {"linear": {"top1": top1, "last_top1": top1, "best_stage": "block4", "last_stage": "block4",
                                "epochs": 30, "shots_per_class": None}},
            "epochs": 4, "wall_time": {"total": 60.0}}


def _evaluation(task: str, seed: int, value: float, data: str = "cifar10_jpeg", size: int = 32,
                own: int = 32, status: str = "ok", protocol: str = "linear") -> dict:
    result = ({"map": value, "best_stage": "block3", "last_stage": "block4", "cross_val_folds": 3, "ap_metric": "voc"}
              if protocol == "voc07_svm" else {"top1": value, "best_stage": "block4", "last_stage": "block4"})
    return {"status": status, "kind": "transfer", "task": task, "backbone": "convnet", "data": data, "seed": 0,
            "pretrained": {"path": f"/runs/{task}-{seed}", "task": task, "backbone": "convnet", "data": "synthetic",
                           "seed": seed},
            "input": {"image_size": size, "pretrained_image_size": own},
            "eval": {protocol: result} if status == "ok" else {}}


def _rows(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], {cells[0]: cells for cells in split[2:]}


def test_transfer_results_become_columns_of_their_pretraining_rows(tmp_path):
    for seed in (0, 1):
        _write(tmp_path / "pre" / f"rot{seed}", _pretraining("rotation", seed, 0.60 + seed / 100))
        _write(tmp_path / "ev" / f"rot{seed}", _evaluation("rotation", seed, 0.40 + seed / 50))
    _write(tmp_path / "pre" / "none", _pretraining("none", 0, 0.5))
    _write(tmp_path / "ev" / "none-voc", _evaluation("none", 0, 0.30, data="voc2007", size=224, protocol="voc07_svm"))
    markdown = build_table([tmp_path / "pre", tmp_path / "ev"], tmp_path / "out")
    header, rows = _rows(markdown)
    linear = header.index("linear top-1 % on cifar10_jpeg")
    voc = header.index("VOC07 SVM mAP % on voc2007 at 224 px")
    assert header.index("linear top-1 % (best stage)") < linear < header.index("pretext metric (val)")
    assert set(rows) == {"random init", "rotation"}  # no extra rows: each evaluation joins its run's row
    assert rows["rotation"][linear] == "41.0 ± 1.4 (block4)"
    assert rows["rotation"][voc] == "–" and rows["random init"][linear] == "–"
    assert rows["random init"][voc] == "30.0 (block3; 32 px backbone)"
    assert "evaluated on voc2007 by `python -m pretextlab.evaluate`, its images resized to 224 px" in markdown
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "table.csv").read_text())))
    rotation = next(r for r in table if r["task"] == "rotation")
    assert rotation["transfer_cifar10_jpeg_linear_top1_pct_mean"] == "41.0"


def test_an_evaluation_without_its_run_gets_a_row_and_failures_are_listed(tmp_path):
    _write(tmp_path / "ev" / "a", _evaluation("jigsaw", 3, 0.25))
    _write(tmp_path / "ev" / "b", _evaluation("context", 0, 0.0, status="failed: pretrained path /x does not exist"))
    _write(tmp_path / "pre" / "rot", _pretraining("rotation", 0, 0.6))
    _write(tmp_path / "ev" / "c", _evaluation("rotation", 1, 0.5))  # another seed than the row's
    markdown = build_table([tmp_path / "pre", tmp_path / "ev"], tmp_path / "out")
    header, rows = _rows(markdown)
    column = header.index("linear top-1 % on cifar10_jpeg")
    assert rows["jigsaw"][column] == "25.0 (block4)" and rows["jigsaw"][3] == "3" and rows["jigsaw"][2] == "synthetic"
    assert rows["rotation"][column] == "50.0 (block4; seed 1)"
    assert "context" not in rows
    assert "Failed evaluations (not in the table):" in markdown
    assert "pretrained path /x does not exist" in markdown


def test_evaluations_alone_make_a_table(tmp_path):
    _write(tmp_path / "ev" / "a", _evaluation("rotation", 0, 0.5))
    header, rows = _rows(build_table([tmp_path / "ev"]))
    assert rows["rotation"][header.index("linear top-1 % on cifar10_jpeg")] == "50.0 (block4)"
