"""The table's text: its columns (one per protocol present, with the legend naming each protocol),
the Markdown table with its legend, per-stage tables and reference notes, and the CSV.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretextlab.table.collect import Row, is_linear_like, mean_std, random_init_floors

#: The reference column: each task's published figure (its class declares it; see tasks/base.py).
REFERENCE_HEADER = "reference: ImageNet linear top-1 % (published, NOT measured here)"
REFERENCE_LEGEND = (
    "**reference** — published ImageNet linear-probe top-1 as summarised in the seed (random ~11, rotation ~48, "
    "jigsaw ~45, colorization ~40, context ~35, supervised ~75): ImageNet, AlexNet/ResNet-50-era networks, their "
    "own probes. A different setting, shown only for orientation, never comparable cell by cell; inpainting "
    "(context encoder) and MAE have no published number in that setting (–)."
)
#: Rows run in RotNet's own setting (backbone nin on CIFAR-10: experiment=rotnet_cifar_gpu) show RotNet's
#: published CIFAR-10 figures instead (Gidaris et al. 2018; NIN, classifiers on frozen block-2 maps).
REFERENCE_ROTNET_LEGEND = (
    "**reference** of rows on the `nin` backbone with CIFAR-10 (RotNet's own setting, `experiment=rotnet_cifar_gpu`): "
    "RotNet's published CIFAR-10 top-1 from classifiers on frozen block-2 maps (non-linear MLP, conv block), "
    "not a linear probe and not measured here."
)


# -- per-stage tables ---------------------------------------------------------------------------------
def _stages_of(rows: list[Row]) -> list[str]:
    stages: list[str] = []
    for row in rows:
        for key in row.values:
            if key.startswith("linear@") and key[len("linear@"):] not in stages:
                stages.append(key[len("linear@"):])
    return stages


def stage_tables(rows: list[Row]) -> str:
    """Markdown: linear-probe test top-1 of every stage, one table per (backbone, data), each pretext
    row with its difference to its own random-init row at that stage in brackets."""
    floors = random_init_floors(rows)
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if not row.failed and any(k.startswith("linear@") for k in row.values):
            groups.setdefault((str(row.backbone), str(row.data)), []).append(row)
    parts: list[str] = []
    for (backbone, data), members in groups.items():
        stages = _stages_of(members)
        dims = [_format_number(next((r.values.get(f"dim@{s}") for r in members if r.values.get(f"dim@{s}")), None), 0)
                for s in stages]
        headers = ["task", "seeds", *[f"{s} ({d} features)" for s, d in zip(stages, dims)]]
        lines = [f"Linear probe test top-1 % by stage — {backbone}, {data} (in brackets: points above the random "
                 "init of the same backbone at that stage):", "",
                 "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        for row in members:
            floor = floors.get(row.floor)
            cells = [row.label, _seeds_text(row)]
            for stage in stages:
                values = row.values.get(f"linear@{stage}")
                text = _format_number(values, 1)
                base = floor.values.get(f"linear@{stage}") if floor is not None and floor is not row else None
                if values and base:
                    text += f" ({statistics.fmean(values) - statistics.fmean(base):+.1f})"
                cells.append(text)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# -- columns ------------------------------------------------------------------------------------------
@dataclass
class Column:
    key: str          # value key in Row.values (or a special name)
    header: str       # Markdown header
    csv_name: str     # CSV base name
    legend: str       # what protocol the column is
    stage_key: str | None = None   # Row.texts key shown in brackets
    decimals: int = 1


def _protocol_settings(rows: list[Row], name: str) -> dict[str, Any]:
    for row in rows:
        for record in row.records:
            result = (record.get("eval") or {}).get(name)
            if isinstance(result, dict):
                return result
    return {}


def build_columns(rows: list[Row]) -> list[Column]:
    """Columns for every protocol present, then pretext metric, online probe, epochs, wall time."""
    present = list(dict.fromkeys(key.split(":")[0] for row in rows for key in row.values if ":" in key))

    def protocol_rank(name: str) -> tuple[int, str]:
        result = _protocol_settings(rows, name)
        if is_linear_like(result):
            return (0 if result.get("shots_per_class") is None else 1, name)
        return ({"knn": 2, "finetune": 3}.get(name, 4 if result.get("shots_per_class") is None else 5), name)

    columns: list[Column] = []
    for name in sorted(present, key=protocol_rank):
        result = _protocol_settings(rows, name)
        shots = result.get("shots_per_class")
        shot_text = f", {shots} labels/class" if shots is not None else ""
        shot_legend = (f" Low-shot: trained on a fixed, seeded choice of {shots} labelled images per class."
                       if shots is not None else "")
        if is_linear_like(result):
            label = "linear" if name == "linear" else name
            columns.append(Column(
                f"{name}:best", f"{label}{shot_text} top-1 % (best stage)", f"{name}_best_stage_top1",
                f"**{label}{shot_text} (best stage)** — offline layer-wise linear probe on frozen features of every stage, "
                f"each stage average-pooled to a grid of a few thousand features (sizes in the per-stage tables below; "
                f"standardised with train statistics; lr/weight decay from a sweep scored on a validation split "
                f"carved from train; {result.get('epochs', '?')} epochs); the stage with the best validation accuracy, "
                f"named in brackets; test top-1.{shot_legend}",
                stage_key=f"{name}:best_stage"))
            columns.append(Column(
                f"{name}:last", f"{label}{shot_text} top-1 % (last stage)", f"{name}_last_stage_top1",
                f"**{label}{shot_text} (last stage)** — the same probe on the last stage only (what a last-layer-only "
                "table would report).", stage_key=None))
            if name == "linear":
                columns.extend(floor_columns(rows))
        elif name == "knn":
            columns.append(Column(
                f"{name}:top1", f"kNN{shot_text} top-1 %", f"{name}_top1",
                f"**kNN** — weighted k-NN (k={result.get('k', '?')}, temperature {result.get('temperature', '?')}, "
                f"votes exp(cos/T)) on L2-normalised frozen features of stage {result.get('stage', '?')}; no training."
                f"{shot_legend}"))
        elif name == "finetune":
            columns.append(Column(
                f"{name}:top1", f"fine-tune{shot_text} top-1 %", f"{name}_top1",
                f"**fine-tune** — the whole network plus a linear head trained on the labels from the pretrained weights "
                f"({result.get('epochs', '?')} epochs, SGD, augmented); test top-1.{shot_legend}"))
        else:
            columns.append(Column(f"{name}:top1", f"{name}{shot_text} top-1 %", f"{name}_top1",
                                  f"**{name}** — evaluation protocol `{name}`; test top-1.{shot_legend}"))
    columns.append(Column(
        "pretext", "pretext metric (val)", "pretext_val",
        "**pretext metric (val)** — the pretext task's own validation metric at the end of pretraining, labelled "
        "in the cell: `acc` = pretext accuracy in % (compare with the task's chance level); `MSE`, `masked MSE`, "
        "`ab MSE`, `loss` = reconstruction error (lower is better); supervised shows its label accuracy; random init has none.",
        decimals=1))
    columns.append(Column(
        "online", "online probe top-1 % (during pretraining)", "online_probe_val_top1",
        "**online probe** — a linear head trained alongside pretraining on detached last-stage features of the "
        "augmented training batches, scored at the last validation epoch (a training monitor); NOT the offline "
        "linear probe, whose numbers are the ones to compare."))
    columns.append(Column("epochs", "epochs", "epochs", "**epochs** — pretraining epochs run.", decimals=0))
    columns.append(Column("minutes", "wall time (min)", "wall_time_min",
                          "**wall time** — pretraining + evaluation of one job, minutes.", decimals=1))
    return columns


def floor_columns(rows: list[Row]) -> list[Column]:
    """The difference to each row's own random init, when any row has one."""
    if not any(row.values.get("floor_delta") for row in rows):
        return []
    recalibrated = any((record.get("eval") or {}).get("linear", {}).get("bn_recalibrated_images")
                       for row in rows if str(row.task) == "none" for record in row.records)
    bn_text = (" The random-init rows were evaluated with BatchNorm statistics re-estimated on training images "
               "(`eval.bn_recalibration=auto`: on for rows that do not pretrain), since untrained running statistics "
               "make BatchNorm an identity." if recalibrated else "")
    return [Column(
        "floor_delta", "Δ vs own random init (points)", "linear_best_minus_own_random_init",
        "**Δ vs own random init** — best-stage linear top-1 minus that of the random-init row of the SAME backbone, "
        "data and evaluation settings (mean over seeds; never another backbone's random init; – where the sweep has "
        f"no such row).{bn_text}")]


def _format_number(values: list[float] | None, decimals: int) -> str:
    if not values:
        return "–"
    if decimals == 0 and len(set(values)) == 1:
        return f"{values[0]:.0f}"  # e.g. epochs: identical across seeds, a ± 0 would be noise
    mean, std = mean_std(values)
    text = f"{mean:.{decimals}f}"
    return f"{text} ± {std:.{decimals}f}" if std is not None else text


def _stage_text(row: Row, key: str) -> str:
    stages = row.texts.get(key) or []
    if not stages:
        return ""
    counts = Counter(stages)
    if len(counts) == 1:
        return stages[0]
    return "/".join(f"{stage}×{count}" for stage, count in counts.most_common())


def _cell(row: Row, column: Column) -> str:
    if row.failed:
        return "–"
    if column.key == "pretext":
        values = row.values.get("pretext")
        if not values:
            return "–"
        label = (row.texts.get("pretext_metric") or ["?"])[0]
        decimals = 1 if label == "acc" else 4
        return f"{label} {_format_number(values, decimals)}"
    if column.key == "floor_delta":
        delta = row.values.get("floor_delta")
        return f"{delta[0]:+.1f}" if delta else "–"
    text = _format_number(row.values.get(column.key), column.decimals)
    if column.stage_key and text != "–":
        stage = _stage_text(row, column.stage_key)
        text = f"{text} ({stage})" if stage else text
    return text


def _status(row: Row) -> str:
    """``ok``; a failed job's first error line; or the shortcut audit's flag (``python -m pretextlab.audit``)."""
    if row.failed:
        return row.status
    audits = [r["audit"] for r in row.records if isinstance(r.get("audit"), dict) and r["audit"].get("applicable")]
    flagged = [a for a in audits if a.get("flagged")]
    if flagged:
        worst = max(100 * float(a["content_free_acc"]) for a in flagged)
        chance = 100 * float(flagged[0]["chance"])
        return (f"shortcut: {len(flagged)}/{len(row.records)} seed(s) flagged by the audit "
                f"(content-free pretext acc up to {worst:.1f} %, chance {chance:.1f} %)")
    return "ok (audited)" if audits else "ok"


def _is_rotnet_setting(row: Row) -> bool:
    return str(row.backbone) == "nin" and str(row.data).startswith("cifar10")


def _reference(row: Row) -> str:
    if _is_rotnet_setting(row):
        return row.facts.reference_rotnet_cifar or "–"
    value = row.facts.reference_imagenet_linear
    return "–" if value is None else f"~{value:.0f}"


def _seeds_text(row: Row) -> str:
    seeds = [str(s) for s in row.seeds]
    return ",".join(seeds) if seeds else "–"


# -- outputs ------------------------------------------------------------------------------------------
def to_markdown(rows: list[Row], columns: list[Column], sources: list[Path] | None = None) -> str:
    headers = ["task", "backbone", "data", "seeds", *[c.header for c in columns], "status", REFERENCE_HEADER]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [row.label, str(row.backbone or "–"), str(row.data or "–"), _seeds_text(row),
                 *[_cell(row, c) for c in columns], _status(row),
                 f"*{_reference(row)}*" if _reference(row) != "–" else "–"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    legend = ["", "Columns:", ""]
    legend.append("- **seeds** — the seeds averaged in the row; several seeds show mean ± sample std.")
    legend.extend(f"- {column.legend}" for column in columns)
    legend.append("- **status** — `ok`, or `failed:` with the first line of the job's error (failed jobs are never "
                  "averaged into a row); `ok (audited)` / `shortcut:` after `python -m pretextlab.audit <run dir>`: "
                  "a shortcut is flagged when the trained model solves its puzzle far above chance on inputs "
                  "without content.")
    legend.append(f"- {REFERENCE_LEGEND}")
    if any(_is_rotnet_setting(row) for row in rows):
        legend.append(f"- {REFERENCE_ROTNET_LEGEND}")
    stages = stage_tables(rows)
    if stages:
        legend += ["", stages]
    if sources:
        legend.append("")
        legend.append("Merged from " + ", ".join(f"`{s}`" for s in sources)
                      + " (a later directory overrides an earlier one for the same task, backbone, data and seed).")
    return "\n".join(lines + legend) + "\n"


def csv_header(columns: list[Column]) -> list[str]:
    header = ["task", "task_label", "backbone", "data", "seeds", "num_seeds", "status"]
    for column in columns:
        if column.key == "pretext":
            header += ["pretext_metric", "pretext_val_mean", "pretext_val_std"]
            continue
        suffix = "" if column.key in ("epochs", "minutes") else "_pct"
        header += [f"{column.csv_name}{suffix}_mean", f"{column.csv_name}{suffix}_std"]
        if column.stage_key:
            header.append(f"{column.csv_name.removesuffix('_top1')}")
    header.append("reference_imagenet_linear_top1_pct_published")
    return header


def to_csv(rows: list[Row], columns: list[Column]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(csv_header(columns))
    for row in rows:
        line: list[Any] = [row.task, row.label, row.backbone, row.data, ";".join(str(s) for s in row.seeds),
                           len(row.records), _status(row)]
        for column in columns:
            values = None if row.failed else row.values.get(column.key)
            mean, std = mean_std(values) if values else (None, None)
            if column.key == "pretext":
                label = (row.texts.get("pretext_metric") or [""])[0]
                line += [label, _round(mean), _round(std)]
                continue
            line += [_round(mean), _round(std)]
            if column.stage_key:
                line.append(_stage_text(row, column.stage_key) if not row.failed else "")
        reference = None if _is_rotnet_setting(row) else row.facts.reference_imagenet_linear
        line.append("" if reference is None else reference)
        writer.writerow(["" if v is None else v for v in line])
    return buffer.getvalue()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
