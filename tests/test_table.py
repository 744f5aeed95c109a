"""The table builder on fake sweep directories written by the tests."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from pretextlab.table.cli import build_table, main
from pretextlab.table.collect import build_rows, collect_results, merge_results
from pretextlab.table.render import build_columns
from pretextlab.table.render import REFERENCE_HEADER
from pretextlab.table.wandb_summary import log_to_wandb


def ok_record(task: str, linear: float, seed: int = 0, *, last: float | None = None, knn: float | None = None,
              finetune: float | None = None, lowshot: float | None = None, pretext: dict[str, float] | None = None,
              online: float | None = 0.3, backbone: str = "convnet", data: str = "synthetic") -> dict[str, Any]:
    evaluation: dict[str, Any] = {"linear": {
        "top1": linear, "top5": min(1.0, linear + 0.3), "best_stage": "block2", "last_stage": "block4",
        "last_top1": linear - 0.05 if last is None else last, "last_top5": 0.9, "per_stage": {},
        "shots_per_class": None, "epochs": 30,
    }}
    if knn is not None:
        evaluation["knn"] = {"top1": knn, "top5": 0.9, "stage": "block4", "k": 200, "temperature": 0.1,
                             "shots_per_class": None}
    if finetune is not None:
        evaluation["finetune"] = {"top1": finetune, "top5": 0.95, "epochs": 10, "shots_per_class": None}
    if lowshot is not None:
        evaluation["linear_lowshot"] = {**evaluation["linear"], "top1": lowshot, "shots_per_class": 10}
    return {
        "status": "ok", "task": task, "backbone": backbone, "data": data, "seed": seed,
        "pretext": pretext if pretext is not None else ({} if task == "none" else {"val_acc": 0.9, "val_loss": 0.3}),
        "online_probe": {} if online is None else {"val_acc": online},
        "eval": evaluation, "epochs": 0 if task == "none" else 5, "wall_time": {"total": 120.0},
    }


def write_sweep(root: Path, records: list[dict[str, Any]]) -> Path:
    for index, record in enumerate(records):
        run = root / f"{index}_{record.get('task')}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(record))
    return root


def body_rows(markdown: str) -> list[list[str]]:
    """The main table's rows (the first table; per-stage tables follow the legend)."""
    table = markdown.split("\n\n")[0]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


def task_of(label: str) -> str:
    """A row label without its pretraining budget ("rotation (5 ep)" → "rotation")."""
    return label.split(" (")[0]


def header(markdown: str) -> list[str]:
    return [cell.strip() for cell in markdown.splitlines()[0].strip("|").split(" | ")]


def test_rows_run_from_random_init_to_supervised_with_a_failed_row(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [
        ok_record("supervised", 0.80),
        {"status": "failed: CUDA out of memory\nmore lines", "task": "jigsaw", "backbone": "convnet",
         "data": "synthetic", "seed": 0},
        ok_record("rotation", 0.50),
        ok_record("mystery", 0.45),
        ok_record("none", 0.30),
    ])
    markdown = build_table([sweep])
    rows = body_rows(markdown)
    assert [task_of(r[0]) for r in rows] == ["random init", "jigsaw", "rotation", "mystery", "supervised"]
    jigsaw = rows[1]
    assert jigsaw[header(markdown).index("status")] == "failed: CUDA out of memory"
    assert "more lines" not in markdown
    cols = header(markdown)
    best = cols.index("linear top-1 % (best stage)")
    assert rows[2][best] == "50.0 (block2)"
    assert rows[2][cols.index("linear top-1 % (last stage)")] == "45.0"
    assert rows[2][cols.index("pretext metric (val)")] == "acc 90.0"
    assert rows[0][cols.index("pretext metric (val)")] == "–"
    for name in ("table.md", "table.csv", "table.png"):
        assert (sweep / name).exists()
    assert (sweep / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep / "table.md").read_text() == markdown


def test_several_seeds_give_mean_and_std(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [ok_record("rotation", v, seed=s) for s, v in enumerate((0.40, 0.50, 0.60))])
    markdown = build_table([sweep])
    rows = body_rows(markdown)
    assert len(rows) == 1
    cols = header(markdown)
    assert rows[0][cols.index("seeds")] == "0,1,2"
    assert rows[0][cols.index("linear top-1 % (best stage)")] == "50.0 ± 10.0 (block2)"
    table_csv = list(csv.DictReader(io.StringIO((sweep / "table.csv").read_text())))
    assert float(table_csv[0]["linear_best_stage_top1_pct_mean"]) == pytest.approx(50.0)
    assert float(table_csv[0]["linear_best_stage_top1_pct_std"]) == pytest.approx(10.0)
    assert table_csv[0]["num_seeds"] == "3"


def test_a_later_sweep_overrides_the_same_job_and_adds_new_ones(tmp_path):
    first = write_sweep(tmp_path / "first", [ok_record("none", 0.30), ok_record("rotation", 0.40),
                                             ok_record("rotation", 0.44, seed=1)])
    second = write_sweep(tmp_path / "second", [ok_record("rotation", 0.60), ok_record("supervised", 0.80)])
    out = tmp_path / "merged"
    markdown = build_table([first, second], out)
    rows = body_rows(markdown)
    cols = header(markdown)
    assert [task_of(r[0]) for r in rows] == ["random init", "rotation", "supervised"]
    # seed 0 of rotation comes from the second sweep (60), seed 1 from the first (44).
    assert rows[1][cols.index("linear top-1 % (best stage)")] == "52.0 ± 11.3 (block2)"
    assert "Merged from" in markdown
    assert (out / "table.md").exists() and not (first / "table.md").exists()


def test_reference_column_is_separate_and_labelled(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [ok_record("none", 0.3), ok_record("rotation", 0.5),
                                             ok_record("inpainting", 0.4, pretext={"val_loss": 0.0123}),
                                             ok_record("mae", 0.3, pretext={"val_mse": 0.02, "val_loss": 0.02}),
                                             ok_record("supervised", 0.8)])
    markdown = build_table([sweep])
    cols = header(markdown)
    assert cols[-1] == REFERENCE_HEADER and "NOT measured" in cols[-1]
    rows = {task_of(r[0]): r for r in body_rows(markdown)}
    assert rows["rotation"][-1] == "*~48*" and rows["random init"][-1] == "*~11*"
    assert rows["supervised"][-1] == "*~75*" and rows["inpainting"][-1] == "–"
    # Measured cells never carry a reference number.
    assert "48" not in rows["rotation"][cols.index("linear top-1 % (best stage)")]
    assert rows["inpainting"][cols.index("pretext metric (val)")] == "loss 0.0123"
    assert rows["mae"][cols.index("pretext metric (val)")] == "MSE 0.0200" and rows["mae"][-1] == "–"
    assert "different setting" in markdown.lower()
    table_csv = list(csv.DictReader(io.StringIO((sweep / "table.csv").read_text())))
    by_task = {r["task"]: r for r in table_csv}
    assert by_task["rotation"]["reference_imagenet_linear_top1_pct_published"] == "48.0"
    assert by_task["inpainting"]["reference_imagenet_linear_top1_pct_published"] == ""
    assert by_task["rotation"]["linear_best_stage_top1_pct_mean"] == "50.0"


def test_columns_follow_the_protocols_and_the_legend_names_them(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [ok_record("rotation", 0.5, knn=0.42, finetune=0.7, lowshot=0.2, online=0.35)])
    markdown = build_table([sweep])
    cols = header(markdown)
    expected = ["linear top-1 % (best stage)", "linear top-1 % (last stage)",
                "linear_lowshot, 10 labels/class top-1 % (best stage)", "kNN top-1 %", "fine-tune top-1 %",
                "pretext metric (val)", "online probe top-1 % (during pretraining)", "epochs", "wall time (min)"]
    assert [c for c in cols if c in expected] == expected
    row = body_rows(markdown)[0]
    assert row[cols.index("kNN top-1 %")] == "42.0" and row[cols.index("fine-tune top-1 %")] == "70.0"
    assert row[cols.index("online probe top-1 % (during pretraining)")] == "35.0"
    assert row[cols.index("wall time (min)")] == "2.0"
    legend = markdown.split("Columns:")[1]
    for phrase in ("offline linear probe", "validation split", "k=200", "fine-tune", "NOT the offline",
                   "10 labelled images per class"):
        assert phrase in legend
    # a table without kNN/fine-tune has no such columns
    plain = write_sweep(tmp_path / "plain", [ok_record("rotation", 0.5)])
    assert "kNN top-1 %" not in header(build_table([plain]))


def test_main_prints_the_table_and_reports_a_missing_directory(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", [ok_record("rotation", 0.5)])
    assert main([str(sweep)]) == 0
    assert "rotation" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreadable_results_become_a_failed_row(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [ok_record("rotation", 0.5)])
    broken = sweep / "9_broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    rows = body_rows(build_table([sweep]))
    assert any("failed: unreadable results.json" in cell for row in rows for cell in row)


def test_wandb_failure_never_breaks_the_table(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def broken_init(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    sweep = write_sweep(tmp_path / "sweep", [ok_record("rotation", 0.5)])
    with pytest.warns(UserWarning, match="W&B logging of the table failed"):
        assert main([str(sweep), "--wandb", "--wandb-group", "g"]) == 0
    assert (sweep / "table.md").exists()


def test_wandb_summary_run_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = write_sweep(tmp_path / "sweep", [ok_record("none", 0.3), ok_record("rotation", 0.5)])
    rows = build_rows(merge_results(collect_results([sweep])))
    columns = build_columns(rows)
    assert log_to_wandb(rows, columns, None, "pretextlab-test", "g", None, tmp_path)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


# -- the per-backbone floor, per-stage tables, row labels --------------------------------------------
def with_stages(record: dict[str, Any], stages: dict[str, float], dims: dict[str, int] | None = None,
                config: dict[str, Any] | None = None, pretrain_images: int | None = None) -> dict[str, Any]:
    record["eval"]["linear"]["per_stage"] = {
        stage: {"top1": top1, "dim": (dims or {}).get(stage, 1024)} for stage, top1 in stages.items()}
    if config is not None:
        record["config"] = config
    if pretrain_images is not None:
        record["pretrain_images"] = pretrain_images
    return record


def test_each_row_is_compared_with_the_random_init_of_its_own_backbone(tmp_path):
    conv = {"block1": 0.40, "block2": 0.30}
    vit = {"block1": 0.20, "block6": 0.15}
    sweep = write_sweep(tmp_path / "sweep", [
        with_stages(ok_record("none", 0.30), conv),
        with_stages(ok_record("rotation", 0.50), {"block1": 0.45, "block2": 0.50}),
        with_stages(ok_record("none", 0.20, backbone="vit"), vit),
        with_stages(ok_record("mae", 0.25, backbone="vit"), {"block1": 0.25, "block6": 0.22}),
        ok_record("jigsaw", 0.35, backbone="resnet18"),  # no random init of its own backbone
    ])
    markdown = build_table([sweep])
    assert "Δ vs own random init (points)" in header(markdown)
    column = header(markdown).index("Δ vs own random init (points)")
    rows = {(task_of(r[0]), r[1]): r for r in body_rows(markdown)}
    assert rows[("rotation", "convnet")][column] == "+20.0"
    assert rows[("mae", "vit")][column] == "+5.0"  # against the ViT's random init, never the convnet's (-5.0)
    assert rows[("jigsaw", "resnet18")][column] == "–"
    assert rows[("random init", "convnet")][column] == "–"
    assert "SAME backbone" in markdown
    # Per-stage tables, one per backbone, with the difference to that backbone's random init per stage.
    assert "Linear probe test top-1 % by stage — convnet, synthetic" in markdown
    assert "Linear probe test top-1 % by stage — vit, synthetic" in markdown
    stage_lines = [line for line in markdown.splitlines() if line.startswith("| mae")]
    assert stage_lines and "25.0 (+5.0)" in stage_lines[-1] and "22.0 (+7.0)" in stage_lines[-1]
    assert "block1 (1024 features)" in markdown


def test_the_floor_must_share_the_evaluation_settings(tmp_path):
    def config(epochs: int, pool_dim: int) -> dict[str, Any]:
        return {"task": {}, "trainer": {"max_epochs": epochs}, "backbone": {"width": 16},
                "data": {"source": {"num_train": 100}, "seed": 0}, "eval": {"pool_dim": pool_dim, "seed": 0}}
    sweep = write_sweep(tmp_path / "sweep", [
        with_stages(ok_record("none", 0.30), {"block1": 0.3}, config=config(0, 2048)),
        with_stages(ok_record("rotation", 0.50), {"block1": 0.5}, config=config(5, 2048)),
        with_stages(ok_record("context", 0.40), {"block1": 0.4}, config=config(5, 512)),  # another probe
    ])
    markdown = build_table([sweep])
    column = header(markdown).index("Δ vs own random init (points)")
    rows = {task_of(r[0]): r for r in body_rows(markdown)}
    assert rows["rotation"][column] == "+20.0" and rows["context"][column] == "–"


def test_row_labels_carry_the_budget_and_the_task_variant_so_variants_never_merge(tmp_path):
    def jigsaw(grid: int, seed: int, linear: float) -> dict[str, Any]:
        record = ok_record("jigsaw", linear, seed)
        record["config"] = {"task": {"name": "jigsaw", "grid": grid, "num_permutations": 24},
                            "trainer": {"max_epochs": 10}, "data": {"num_pretrain": 10000}}
        record["pretrain_images"] = 10000
        return record
    sweep = write_sweep(tmp_path / "sweep", [jigsaw(2, 0, 0.50), jigsaw(3, 0, 0.40), jigsaw(2, 1, 0.52),
                                             ok_record("none", 0.3)])
    labels = [r[0] for r in body_rows(build_table([sweep]))]
    assert labels == ["random init", "jigsaw 2×2 (10 ep × 10k img)", "jigsaw 3×3 (10 ep × 10k img)"]
    rows = {r[0]: r for r in body_rows(build_table([sweep]))}
    assert rows["jigsaw 2×2 (10 ep × 10k img)"][3] == "0,1"  # seeds of one variant still average together
    longer = jigsaw(2, 0, 0.55)
    longer["config"]["trainer"]["max_epochs"] = 20
    (tmp_path / "more" / "0").mkdir(parents=True)
    (tmp_path / "more" / "0" / "results.json").write_text(json.dumps(longer))
    labels = [r[0] for r in body_rows(build_table([tmp_path / "more", sweep]))]
    assert "jigsaw 2×2 (20 ep × 10k img)" in labels and "jigsaw 2×2 (10 ep × 10k img)" in labels

# -- records that name their source (issue 15, defects 10 and 12) -----------------------------------
def _status_cells(markdown: str) -> list[str]:
    cols = header(markdown)
    return [row[cols.index("status")] for row in body_rows(markdown)]


def test_damaged_records_become_failed_rows_that_name_their_file(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [ok_record("rotation", 0.5)])
    listed_seed = ok_record("jigsaw", 0.6)
    listed_seed["seed"] = [0, 1]  # crashed the builder: unhashable in the merge key
    damaged = {"1_truncated": '{"status": "ok", "task": "rot', "2_only_status": json.dumps({"status": "ok"}),
               "3_listed_seed": json.dumps(listed_seed), "4_not_an_object": "[1, 2]",
               "5_bad_types": json.dumps({**ok_record("context", 0.4), "eval": "great", "epochs": -3})}
    for name, text in damaged.items():
        (sweep / name).mkdir()
        (sweep / name / "results.json").write_text(text)
    markdown = build_table([sweep])
    statuses = _status_cells(markdown)
    assert statuses.count("ok") == 1  # only the real record; {"status": "ok"} alone is not a finished job
    for name in damaged:
        (cell,) = [s for s in statuses if f"{name}/results.json" in s]
        assert cell.startswith(("failed: unreadable results.json at ", "failed: invalid results.json at ")), cell
        assert str(sweep) in cell
    assert any("seed=[0, 1] must be an integer" in s for s in statuses)
    assert any("no 'task', 'backbone', 'data', 'seed', 'eval'" in s for s in statuses)
    assert any("eval='great'" in s and "epochs=-3" in s for s in statuses)
    ok_rows = [row for row in body_rows(markdown) if row[header(markdown).index("status")] == "ok"]
    assert [row[0] for row in ok_rows] == ["rotation (5 ep)"]  # the label carries the pretraining budget


def test_a_pretext_row_that_never_pretrained_says_so(tmp_path):
    untrained = {**ok_record("rotation", 0.3), "epochs": 0, "steps": 0}  # written by trainer.max_epochs=0 before
    sweep = write_sweep(tmp_path / "sweep", [ok_record("none", 0.3), untrained])
    markdown = build_table([sweep])
    rows = {row[0].split(" (")[0]: row for row in body_rows(markdown)}  # labels end in their budget
    status = rows["rotation"][header(markdown).index("status")]
    assert status.startswith("failed: task rotation ran 0 pretraining steps, so its backbone is random init")
    assert rows["rotation"][header(markdown).index("linear top-1 % (best stage)")] == "–"
    assert rows["random init"][header(markdown).index("status")] == "ok"


def test_variants_of_the_backbone_or_of_the_chosen_options_never_merge_into_one_row(tmp_path):
    narrow, wide = ok_record("rotation", 0.5), ok_record("rotation", 0.6)
    narrow["config"] = {"backbone": {"name": "convnet", "width": 16}}
    wide["config"] = {"backbone": {"name": "convnet", "width": 32}}
    preset, plain = ok_record("jigsaw", 0.4), ok_record("jigsaw", 0.45)
    preset["options"] = {"task": "jigsaw", "backbone": "convnet", "data": "synthetic", "eval": "linear",
                         "experiment": "quick"}
    plain["options"] = {**preset["options"], "experiment": None}
    markdown = build_table([write_sweep(tmp_path / "sweep", [narrow, wide, preset, plain])])
    labels = [row[0] for row in body_rows(markdown)]
    assert any("backbone.width=16" in label for label in labels), labels
    assert any("backbone.width=32" in label for label in labels), labels
    assert any("experiment=quick" in label for label in labels), labels
    assert sum(label.startswith("jigsaw ") for label in labels) == 2, labels


def test_colorization_is_compared_with_the_random_init_of_its_own_one_channel_backbone(tmp_path):
    """Colorization's backbone reads the L channel (in_channels=1): its floor is `task=none
    task.in_channels=1` (pretextlab sweep adds that job), never the RGB random init."""
    def config(task: str, channels: int, epochs: int) -> dict[str, Any]:
        return {"task": {"name": task, "in_channels": channels}, "trainer": {"max_epochs": epochs},
                "backbone": {"width": 16, "in_channels": channels},
                "data": {"source": {"num_train": 100}, "seed": 0}, "eval": {"pool_dim": 2048, "seed": 0}}
    sweep = write_sweep(tmp_path / "sweep", [
        with_stages(ok_record("none", 0.30), {"block1": 0.30}, config=config("none", 3, 0)),
        with_stages(ok_record("none", 0.25), {"block1": 0.25}, config=config("none", 1, 0)),
        with_stages(ok_record("rotation", 0.50), {"block1": 0.50}, config=config("rotation", 3, 5)),
        with_stages(ok_record("colorization", 0.40), {"block1": 0.40}, config=config("colorization", 1, 5)),
    ])
    markdown = build_table([sweep])
    column = header(markdown).index("Δ vs own random init (points)")
    rows = {r[0]: r for r in body_rows(markdown)}
    assert rows["rotation (5 ep × 100 img)"][column] == "+20.0"
    assert rows["colorization (5 ep × 100 img)"][column] == "+15.0"  # vs the L random init (25), not 30
    assert rows["random init, L channel"][column] == "–" and rows["random init"][column] == "–"
    stage_lines = [line for line in markdown.splitlines() if line.startswith("| colorization")]
    assert stage_lines and "40.0 (+15.0)" in stage_lines[-1]
