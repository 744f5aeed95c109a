"""Transfer columns of the table (pretextlab.table.transfer) from hand-written results.json records.

The records are written as ``pretextlab.train`` and ``pretextlab.evaluate`` write them (identity,
task settings, budget, run directory) and read back through the table's own reader
(``ResultsRecord``). An evaluation joins the row of the run it evaluated: by run directory, else by
task settings and budget, else (an export of an unknown run) the only row of its task.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pretextlab.table import build_table


def _write(path: Path, record: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(record))
    return path


def _pretraining(task: str, seed: int, top1: float, epochs: int = 4, images: int = 128,
                 task_config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": "ok", "task": task, "backbone": "convnet", "data": "synthetic", "seed": seed,
            "eval": {"linear": {"top1": top1, "last_top1": top1, "best_stage": "block4", "last_stage": "block4",
                                "epochs": 30, "shots_per_class": None}},
            "epochs": 0 if task == "none" else epochs, "steps": 0 if task == "none" else 2 * epochs,
            "pretrain_images": 0 if task == "none" else images, "wall_time": {"total": 60.0},
            "config": {"task": {"name": task, **(task_config or {})}, "trainer": {"max_epochs": epochs}}}


def _evaluation(pretraining: dict[str, Any], value: float, run_dir: Path | None = None, data: str = "cifar10_jpeg",
                size: int = 32, own: int = 32, status: str = "ok", protocol: str = "linear",
                known_run: bool = True) -> dict[str, Any]:
    """What pretextlab.evaluate records for the run ``pretraining`` in ``run_dir`` (``known_run=False``:
    the run's settings and budget are not recorded, as for an export; without ``run_dir`` either, the
    evaluation names only task, backbone, data and seed)."""
    result = ({"map": value, "best_stage": "block3", "last_stage": "block4", "cross_val_folds": 3, "ap_metric": "voc"}
              if protocol == "voc07_svm" else {"top1": value, "best_stage": "block4", "last_stage": "block4"})
    task, seed = pretraining["task"], pretraining["seed"]
    pretrained: dict[str, Any] = {"path": str(run_dir or f"/elsewhere/{task}-{seed}"), "task": task,
                                  "backbone": "convnet", "data": "synthetic", "seed": seed}
    if run_dir is not None or known_run:
        pretrained["run_dir"] = str(run_dir or f"/elsewhere/{task}-{seed}")
    if known_run:
        pretrained.update({"run_config": {"task": pretraining["config"]["task"],
                                          "trainer": {"max_epochs": pretraining["config"]["trainer"]["max_epochs"]}},
                           "pretrain_images": pretraining["pretrain_images"], "epochs": pretraining["epochs"]})
    return {"schema_version": 1, "status": status, "kind": "transfer", "task": task, "backbone": "convnet",
            "data": data, "seed": 0, "pretrained": pretrained,
            "input": {"image_size": size, "pretrained_image_size": own},
            "eval": {protocol: result} if status == "ok" else {}}


def _rows(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows by label (every label once: a transfer row that duplicated its
    pretraining row would fail here)."""
    table = markdown.split("\n\n")[0]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table.splitlines()
             if line.startswith("|")]
    labels = [cells[0] for cells in split[2:]]
    assert len(labels) == len(set(labels)), labels
    return split[0], {cells[0]: cells for cells in split[2:]}


def test_transfer_results_become_columns_of_their_pretraining_rows(tmp_path):
    pre, ev = tmp_path / "pre", tmp_path / "ev"
    for seed in (0, 1):
        run = _pretraining("rotation", seed, 0.60 + seed / 100)
        _write(ev / f"rot{seed}", _evaluation(run, 0.40 + seed / 50, _write(pre / f"rot{seed}", run)))
    none = _pretraining("none", 0, 0.5)
    _write(ev / "none-voc", _evaluation(none, 0.30, _write(pre / "none", none), data="voc2007", size=224,
                                        protocol="voc07_svm"))
    markdown = build_table([pre, ev], tmp_path / "out")
    header, rows = _rows(markdown)
    linear = header.index("linear top-1 % on cifar10_jpeg")
    voc = header.index("VOC07 SVM mAP % on voc2007 at 224 px")
    assert header.index("linear top-1 % (best stage)") < linear < header.index("pretext metric (val)")
    # No extra rows: each evaluation joins its run's row, labelled with its budget.
    assert set(rows) == {"random init", "rotation (4 ep × 128 img)"}
    rotation = rows["rotation (4 ep × 128 img)"]
    assert rotation[linear] == "41.0 ± 1.4 (block4)"
    assert rotation[voc] == "–" and rows["random init"][linear] == "–"
    assert rows["random init"][voc] == "30.0 (block3; 32 px backbone)"
    assert "evaluated on voc2007 by `python -m pretextlab.evaluate`, its images resized to 224 px" in markdown
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "table.csv").read_text())))
    row = next(r for r in table if r["task"] == "rotation")
    assert row["transfer_cifar10_jpeg_linear_top1_pct_mean"] == "41.0"
    assert row["task_label"] == "rotation (4 ep × 128 img)"


def test_two_budgets_of_a_task_keep_their_own_transfer_cells(tmp_path):
    """By run directory when the directories are where evaluate saw them; by task settings and budget
    when they were moved (the recorded run directory no longer exists)."""
    pre, ev = tmp_path / "pre", tmp_path / "ev"
    short, long = _pretraining("rotation", 0, 0.6, epochs=1), _pretraining("rotation", 0, 0.7, epochs=8)
    _write(ev / "short", _evaluation(short, 0.41, _write(pre / "short", short)))
    _write(ev / "long", _evaluation(long, 0.47, _write(pre / "long", long)))
    # An export inside the long run's directory whose settings were not recorded: its run directory decides.
    _write(ev / "long-export", _evaluation(long, 0.45, pre / "long", data="stl10", known_run=False))
    header, rows = _rows(build_table([pre, ev], tmp_path / "out"))
    column = header.index("linear top-1 % on cifar10_jpeg")
    assert rows["rotation (1 ep × 128 img)"][column] == "41.0 (block4)"
    assert rows["rotation (8 ep × 128 img)"][column] == "47.0 (block4)"
    stl10 = header.index("linear top-1 % on stl10")
    assert rows["rotation (8 ep × 128 img)"][stl10] == "45.0 (block4)"
    assert rows["rotation (1 ep × 128 img)"][stl10] == "–"
    assert len(rows) == 2

    moved, moved_ev = tmp_path / "moved", tmp_path / "moved-ev"
    jigsaw_2, jigsaw_3 = (_pretraining("jigsaw", 0, 0.5, task_config={"grid": g}) for g in (2, 3))
    _write(moved / "j2", jigsaw_2)
    _write(moved / "j3", jigsaw_3)
    # The evaluation names the run directory it saw, which is not where the run is now.
    _write(moved_ev / "j3", _evaluation(jigsaw_3, 0.33, tmp_path / "gone" / "j3"))
    header, rows = _rows(build_table([moved, moved_ev], tmp_path / "out2"))
    column = header.index("linear top-1 % on cifar10_jpeg")
    assert rows["jigsaw 3×3 (4 ep × 128 img)"][column] == "33.0 (block4)"
    assert rows["jigsaw 2×2 (4 ep × 128 img)"][column] == "–"
    assert rows["jigsaw 3×3 (4 ep × 128 img)"][header.index("linear top-1 % (best stage)")] == "50.0 (block4)"


def test_an_export_of_an_unknown_run_joins_the_only_row_of_its_task_or_gets_its_own(tmp_path):
    pre, ev = tmp_path / "pre", tmp_path / "ev"
    rotation = _pretraining("rotation", 0, 0.6)
    _write(pre / "rot", rotation)
    _write(ev / "rot", _evaluation(rotation, 0.5, known_run=False))
    header, rows = _rows(build_table([pre, ev], tmp_path / "out"))
    assert rows["rotation (4 ep × 128 img)"][header.index("linear top-1 % on cifar10_jpeg")] == "50.0 (block4)"

    other = _pretraining("rotation", 0, 0.7, epochs=8)
    _write(pre / "rot-long", other)  # two rotation rows now: the export's row is not known
    header, rows = _rows(build_table([pre, ev], tmp_path / "out2"))
    column = header.index("linear top-1 % on cifar10_jpeg")
    assert rows["rotation"][column] == "50.0 (block4)"  # its own row: no budget is known
    assert rows["rotation (4 ep × 128 img)"][column] == "–" and rows["rotation (8 ep × 128 img)"][column] == "–"


def test_an_evaluation_without_its_run_gets_a_row_and_failures_are_listed(tmp_path):
    pre, ev = tmp_path / "pre", tmp_path / "ev"
    jigsaw = _pretraining("jigsaw", 3, 0.5, epochs=2, images=64, task_config={"grid": 2})
    _write(ev / "a", _evaluation(jigsaw, 0.25))
    context = _pretraining("context", 0, 0.5)
    _write(ev / "b", _evaluation(context, 0.0, status="failed: pretrained path /x does not exist"))
    rotation = _pretraining("rotation", 0, 0.6)
    run = _write(pre / "rot", rotation)
    _write(ev / "c", _evaluation({**rotation, "seed": 1}, 0.5, run))  # another seed than the row's
    markdown = build_table([pre, ev], tmp_path / "out")
    header, rows = _rows(markdown)
    column = header.index("linear top-1 % on cifar10_jpeg")
    own = rows["jigsaw 2×2 (2 ep × 64 img)"]
    assert own[column] == "25.0 (block4)" and own[3] == "3" and own[2] == "synthetic"
    assert own[header.index("linear top-1 % (best stage)")] == "–"
    assert rows["rotation (4 ep × 128 img)"][column] == "50.0 (block4; seed 1)"
    assert not any(label.startswith("context") for label in rows)
    assert "Failed evaluations (not in the table):" in markdown
    assert "pretrained path /x does not exist" in markdown


def test_a_damaged_evaluation_record_is_a_failed_row_naming_its_file(tmp_path):
    """Read through ResultsRecord like every record: a transfer record without its ``pretrained``
    object is not silently dropped nor shown as ok."""
    rotation = _pretraining("rotation", 0, 0.6)
    _write(tmp_path / "pre" / "rot", rotation)
    broken = _evaluation(rotation, 0.5)
    del broken["pretrained"]
    path = _write(tmp_path / "ev" / "broken", broken) / "results.json"
    markdown = build_table([tmp_path / "pre", tmp_path / "ev"], tmp_path / "out")
    header, rows = _rows(markdown)
    failed = [cells for label, cells in rows.items() if cells[header.index("status")].startswith("failed")]
    assert len(failed) == 1
    assert f"invalid results.json at {path}" in failed[0][header.index("status")]
    assert "not an object naming the evaluated backbone" in failed[0][header.index("status")]
    assert not any(h.endswith("on cifar10_jpeg") for h in header)


def test_evaluations_alone_make_a_table(tmp_path):
    _write(tmp_path / "ev" / "a", _evaluation(_pretraining("rotation", 0, 0.6), 0.5))
    header, rows = _rows(build_table([tmp_path / "ev"]))
    assert rows["rotation (4 ep × 128 img)"][header.index("linear top-1 % on cifar10_jpeg")] == "50.0 (block4)"
