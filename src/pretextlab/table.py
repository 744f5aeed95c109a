"""Sweep directories → the transfer-performance table (table.md, table.csv, table.png).

    python -m pretextlab.table outputs/sweeps/<sweep> [more sweep dirs ...] [--output DIR]
    python -m pretextlab.table outputs/sweeps/<sweep> --wandb --wandb-project pretextlab --wandb-group <group>

Collects every ``results.json`` below the given directories (a later directory overrides an earlier
one for the same task, backbone, data and seed), averages seeds (mean ± std), orders rows from
random init through the pretext tasks to supervised, and prints the Markdown table with a legend
that names the protocol behind every column. Results of ``python -m pretextlab.evaluate`` (a
pretrained backbone evaluated on other data) become transfer columns of their pretraining rows
(:mod:`pretextlab.table_transfer`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pretextlab.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

#: Row order of the classic comparison: lower bound first, pretext tasks, upper bound last.
TASK_ORDER = ["none", "inpainting", "context", "colorization", "jigsaw", "rotation", "mae", "multitask", "supervised"]
TASK_LABELS = {"none": "random init", "supervised": "supervised"}

#: Published ImageNet linear top-1 (%) as summarised in the seed (see /work/shared/REFERENCES.md):
#: AlexNet/ResNet-50-era models trained on ImageNet. A different setting from any measured cell.
#: Context encoders (inpainting) and MAE have no number in that setting: they show "–".
REFERENCE_IMAGENET_LINEAR = {"none": 11.0, "rotation": 48.0, "jigsaw": 45.0, "colorization": 40.0,
                             "context": 35.0, "supervised": 75.0}
REFERENCE_HEADER = "reference: ImageNet linear top-1 % (published, NOT measured here)"
REFERENCE_LEGEND = (
    "**reference** — published ImageNet linear-probe top-1 as summarised in the seed (random ~11, rotation ~48, "
    "jigsaw ~45, colorization ~40, context ~35, supervised ~75): ImageNet, AlexNet/ResNet-50-era networks, their "
    "own probes. A different setting, shown only for orientation, never comparable cell by cell; inpainting "
    "(context encoder) and MAE have no published number in that setting (–)."
)

#: Pretext metrics a table can show, in order of preference: (results key, label, is accuracy).
#: (inpainting logs ``masked_mse``, MAE ``mse``, regression colorization ``ab_mse``; see tasks/.)
PRETEXT_METRICS = [
    ("val_acc", "acc", True),
    ("val_masked_mse", "masked MSE", False),
    ("val_mse", "MSE", False),
    ("val_ab_mse", "ab MSE", False),
    ("val_loss_reconstruction", "recon. loss", False),
    ("val_loss", "loss", False),
]


# -- collecting -------------------------------------------------------------------------------------
def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (json.JSONDecodeError, ValueError, OSError) as error:
        record = {"status": f"failed: unreadable results.json ({error})"}
    record["_path"] = str(path)
    return record


def collect_results(directories: list[Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` below ``directories``, in order (directory by directory, paths sorted)."""
    found: list[dict[str, Any]] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.exists():
            raise FileNotFoundError(f"sweep directory {directory} does not exist")
        for path in sorted(directory.rglob("results.json")):
            record = _read_record(path)
            record["_source"] = str(directory)
            found.append(record)
    return found


def _identity(record: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("task", "backbone", "data", "seed")
    if all(record.get(k) is None for k in keys):
        return ("path", record["_path"])  # nothing to merge on: keep it as its own row
    return tuple(record.get(k) for k in keys)


def merge_results(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (task, backbone, data, seed): a later record overrides an earlier one."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        key = _identity(record)
        previous = merged.get(key)
        if previous is not None:
            if previous["_source"] == record["_source"]:
                warnings.warn(f"{record['_path']} and {previous['_path']} are the same (task, backbone, data, seed) "
                              "in one sweep; the table keeps the later one", stacklevel=2)
            else:
                log.info("%s overrides %s", record["_path"], previous["_path"])
        merged[key] = record
    return list(merged.values())


# -- rows ---------------------------------------------------------------------------------------------
def _ok(record: dict[str, Any]) -> bool:
    return record.get("status") == "ok"


def _task_rank(task: Any) -> float:
    if task in TASK_ORDER:
        return float(TASK_ORDER.index(task))
    return TASK_ORDER.index("supervised") - 0.5  # unknown pretext tasks: after the known ones, before supervised


def _is_linear_like(result: dict[str, Any]) -> bool:
    return "best_stage" in result


@dataclass
class Row:
    task: Any
    backbone: Any
    data: Any
    records: list[dict[str, Any]]
    failed: bool = False
    status: str = "ok"
    values: dict[str, list[float]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return TASK_LABELS.get(str(self.task), "unknown" if self.task is None else str(self.task))

    @property
    def seeds(self) -> list[Any]:
        return [r.get("seed") for r in self.records]


def _pretext_metric(record: dict[str, Any]) -> tuple[str, float, bool] | None:
    pretext = record.get("pretext") or {}
    for key, label, is_accuracy in PRETEXT_METRICS:
        value = pretext.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return label, float(value), is_accuracy
    return None


def _record_values(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    values: dict[str, float] = {}
    texts: dict[str, str] = {}
    for name, result in (record.get("eval") or {}).items():
        if not isinstance(result, dict):
            continue
        if _is_linear_like(result):
            if isinstance(result.get("top1"), (int, float)):
                values[f"{name}:best"] = 100 * float(result["top1"])
                texts[f"{name}:best_stage"] = str(result.get("best_stage"))
            if isinstance(result.get("last_top1"), (int, float)):
                values[f"{name}:last"] = 100 * float(result["last_top1"])
                texts[f"{name}:last_stage"] = str(result.get("last_stage"))
        elif isinstance(result.get("top1"), (int, float)):
            values[f"{name}:top1"] = 100 * float(result["top1"])
    pretext = _pretext_metric(record)
    if pretext is not None:
        label, value, is_accuracy = pretext
        values["pretext"] = 100 * value if is_accuracy else value
        texts["pretext_metric"] = label
    online = (record.get("online_probe") or {}).get("val_acc")
    if isinstance(online, (int, float)):
        values["online"] = 100 * float(online)
    if isinstance(record.get("epochs"), (int, float)):
        values["epochs"] = float(record["epochs"])
    total = (record.get("wall_time") or {}).get("total")
    if isinstance(total, (int, float)):
        values["minutes"] = float(total) / 60
    return values, texts


def build_rows(records: list[dict[str, Any]]) -> list[Row]:
    """Seeds of one (task, backbone, data) become one row; each failed job is a row of its own."""
    groups: dict[tuple[Any, Any, Any], Row] = {}
    failed: list[Row] = []
    for record in records:
        key = (record.get("task"), record.get("backbone"), record.get("data"))
        if not _ok(record):
            status = str(record.get("status") or "failed: no status recorded")
            if not status.startswith("failed"):
                status = f"failed: job ended with status {status!r}"
            first_line = (status.splitlines() or ["failed"])[0]
            failed.append(Row(*key, records=[record], failed=True, status=first_line))
            continue
        row = groups.setdefault(key, Row(*key, records=[]))
        row.records.append(record)
        values, texts = _record_values(record)
        for name, value in values.items():
            row.values.setdefault(name, []).append(value)
        for name, text in texts.items():
            row.texts.setdefault(name, []).append(text)
    combos = list(dict.fromkeys((str(r.data), str(r.backbone)) for r in [*groups.values(), *failed]))

    def order(row: Row) -> tuple[Any, ...]:
        # Random init first and supervised last across the whole table (the classic reading order);
        # the same task on several backbones/datasets stays together, in order of appearance.
        return (_task_rank(row.task), combos.index((str(row.data), str(row.backbone))), str(row.task), row.failed)

    return sorted([*groups.values(), *failed], key=order)


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
        if _is_linear_like(result):
            return (0 if result.get("shots_per_class") is None else 1, name)
        return ({"knn": 2, "finetune": 3}.get(name, 4 if result.get("shots_per_class") is None else 5), name)

    columns: list[Column] = []
    for name in sorted(present, key=protocol_rank):
        result = _protocol_settings(rows, name)
        shots = result.get("shots_per_class")
        shot_text = f", {shots} labels/class" if shots is not None else ""
        shot_legend = (f" Low-shot: trained on a fixed, seeded choice of {shots} labelled images per class."
                       if shots is not None else "")
        if _is_linear_like(result):
            label = "linear" if name == "linear" else name
            columns.append(Column(
                f"{name}:best", f"{label}{shot_text} top-1 % (best stage)", f"{name}_best_stage_top1",
                f"**{label}{shot_text} (best stage)** — offline linear probe on frozen, pooled features of every stage "
                f"(features standardised with train statistics; lr/weight decay from a sweep scored on a validation split "
                f"carved from train; {result.get('epochs', '?')} epochs); the stage with the best validation accuracy, "
                f"named in brackets; test top-1.{shot_legend}",
                stage_key=f"{name}:best_stage"))
            columns.append(Column(
                f"{name}:last", f"{label}{shot_text} top-1 % (last stage)", f"{name}_last_stage_top1",
                f"**{label}{shot_text} (last stage)** — the same probe on the last stage only (what a last-layer-only "
                "table would report).", stage_key=None))
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


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _format_number(values: list[float] | None, decimals: int) -> str:
    if not values:
        return "–"
    if decimals == 0 and len(set(values)) == 1:
        return f"{values[0]:.0f}"  # e.g. epochs: identical across seeds, a ± 0 would be noise
    mean, std = _mean_std(values)
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
    text = _format_number(row.values.get(column.key), column.decimals)
    if column.stage_key and text != "–":
        stage = _stage_text(row, column.stage_key)
        text = f"{text} ({stage})" if stage else text
    return text


def _reference(row: Row) -> str:
    value = REFERENCE_IMAGENET_LINEAR.get(str(row.task))
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
                 *[_cell(row, c) for c in columns], row.status if row.failed else "ok",
                 f"*{_reference(row)}*" if _reference(row) != "–" else "–"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    legend = ["", "Columns:", ""]
    legend.append("- **seeds** — the seeds averaged in the row; several seeds show mean ± sample std.")
    legend.extend(f"- {column.legend}" for column in columns)
    legend.append("- **status** — `ok`, or `failed:` with the first line of the job's error (failed jobs are never "
                  "averaged into a row).")
    legend.append(f"- {REFERENCE_LEGEND}")
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
                           len(row.records), row.status if row.failed else "ok"]
        for column in columns:
            values = None if row.failed else row.values.get(column.key)
            mean, std = _mean_std(values) if values else (None, None)
            if column.key == "pretext":
                label = (row.texts.get("pretext_metric") or [""])[0]
                line += [label, _round(mean), _round(std)]
                continue
            line += [_round(mean), _round(std)]
            if column.stage_key:
                line.append(_stage_text(row, column.stage_key) if not row.failed else "")
        reference = REFERENCE_IMAGENET_LINEAR.get(str(row.task))
        line.append("" if reference is None else reference)
        writer.writerow(["" if v is None else v for v in line])
    return buffer.getvalue()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def bar_chart_png(rows: list[Row]) -> bytes | None:
    """PNG of linear top-1 (best and last stage, mean ± std) per row; None without linear results."""
    plotted = [row for row in rows if not row.failed and row.values.get("linear:best")]
    if not plotted:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    several = len({(str(r.data), str(r.backbone)) for r in plotted}) > 1
    labels = [f"{r.label}\n{r.backbone}, {r.data}" if several else r.label for r in plotted]
    figure = Figure(figsize=(max(5.0, 1.1 * len(plotted) + 2), 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(plotted)))
    width = 0.38
    for offset, key, name, colour in ((-width / 2, "linear:best", "best stage", "#1f77b4"),
                                      (width / 2, "linear:last", "last stage", "#aec7e8")):
        means, errors = [], []
        for row in plotted:
            values = row.values.get(key) or [math.nan]
            mean, std = _mean_std(values)
            means.append(mean)
            errors.append(std or 0.0)
        axes.bar([p + offset for p in positions], means, width, yerr=errors, label=f"linear probe, {name}",
                 color=colour, capsize=3)
        for position, mean in zip(positions, means):
            if math.isfinite(mean):
                axes.annotate(f"{mean:.1f}", (position + offset, mean), ha="center", va="bottom", fontsize=7)
    axes.set_xticks(positions)
    axes.set_xticklabels(labels, fontsize=8)
    axes.set_ylabel("test top-1 (%)")
    axes.set_title("Offline linear probe on frozen features (measured)")
    axes.legend(fontsize=8, loc="upper left")
    axes.set_ylim(0, 100)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def log_to_wandb(rows: list[Row], columns: list[Column], png_path: Path | None, project: str, group: str | None,
                 entity: str | None, directory: Path) -> bool:
    """Log the table (+ bar chart) to a W&B summary run; never raises (warns and returns False)."""
    try:
        import wandb

        from pretextlab.loggers import wandb_mode

        mode = wandb_mode("auto")
        if mode == "disabled":
            return False
        header: list[Any] = list(csv_header(columns))
        data = list(csv.reader(io.StringIO(to_csv(rows, columns))))[1:]
        run = wandb.init(project=project, entity=entity, group=group, job_type="table", name=f"table-{group or 'sweep'}",
                         dir=str(directory), mode=cast(Any, mode), reinit=True)
        try:
            table = wandb.Table(columns=header, data=data)
            chart_rows = [[r.label, statistics.fmean(r.values["linear:best"])] for r in rows
                          if not r.failed and r.values.get("linear:best")]
            payload: dict[str, Any] = {"transfer_table": table}
            if chart_rows:
                chart_table = wandb.Table(columns=["task", "linear top-1 % (best stage)"], data=chart_rows)
                payload["linear_top1_chart"] = wandb.plot.bar(chart_table, "task", "linear top-1 % (best stage)",
                                                              title="Offline linear probe top-1 (best stage)")
            if png_path is not None and png_path.exists():
                payload["table_png"] = wandb.Image(str(png_path))
            run.log(payload)
        finally:
            run.finish()
        return True
    except Exception as error:  # the table files matter more than the W&B copy
        warnings.warn(f"W&B logging of the table failed ({type(error).__name__}: {error}); the table files are "
                      "written regardless", stacklevel=2)
        return False


def build_table(directories: list[Path], output_dir: Path | None = None, wandb: dict[str, Any] | None = None) -> str:
    """Write ``table.md``, ``table.csv`` and ``table.png`` into ``output_dir`` (default: the first
    directory) and return the Markdown. ``wandb={"project": ..., "group": ..., "entity": ...}`` also
    logs the table to a W&B summary run (offline without an API key; failures only warn)."""
    from pretextlab.table_transfer import add_transfer_columns, split_transfer_records

    directories = [Path(d) for d in directories]
    # Evaluations by pretextlab.evaluate become transfer columns of their pretraining rows.
    records, transfers = split_transfer_records(collect_results(directories))
    records = merge_results(records)
    if not records and not transfers:
        raise FileNotFoundError(f"no results.json found below {', '.join(map(str, directories))}")
    rows = build_rows(records)
    rows, columns, transfer_notes = add_transfer_columns(rows, build_columns(rows), transfers)
    markdown = to_markdown(rows, columns, directories if len(directories) > 1 else None)
    if transfer_notes:
        markdown += "\nFailed evaluations (not in the table):\n\n" + "".join(f"- {n}\n" for n in transfer_notes)
    target = Path(output_dir) if output_dir is not None else directories[0]
    atomic_write_text(target / "table.md", markdown)
    atomic_write_text(target / "table.csv", to_csv(rows, columns))
    png = bar_chart_png(rows)
    png_path = target / "table.png"
    if png is not None:
        atomic_write_bytes(png_path, png)
    if wandb is not None:
        log_to_wandb(rows, columns, png_path if png is not None else None, wandb.get("project", "pretextlab"),
                     wandb.get("group") or directories[0].name, wandb.get("entity"), target)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretextlab.table", description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path, help="sweep directories (merged in order)")
    parser.add_argument("--output", type=Path, default=None, help="where table files go (default: first directory)")
    parser.add_argument("--wandb", action="store_true", help="also log the table to a W&B summary run")
    parser.add_argument("--wandb-project", default="pretextlab", help="W&B project (default: pretextlab)")
    parser.add_argument("--wandb-group", default=None, help="W&B group (default: the first directory's name)")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity (default: your default entity)")
    args = parser.parse_args(argv)
    wandb = {"project": args.wandb_project, "group": args.wandb_group, "entity": args.wandb_entity} if args.wandb else None
    try:
        print(build_table(args.directories, args.output, wandb), end="")
    except FileNotFoundError as error:
        print(f"pretextlab.table: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
