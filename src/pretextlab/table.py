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
from pretextlab.results import RESULTS_FILE, ResultsError, ResultsRecord

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

#: RotNet's published CIFAR-10 figures (Gidaris et al. 2018; NIN, classifiers on frozen block-2 maps), the
#: reference of rows run in RotNet's own setting (backbone nin on CIFAR-10: experiment=rotnet_cifar_gpu).
REFERENCE_ROTNET_CIFAR = {"rotation": "RotNet CIFAR-10 block2: 89.06 non-linear / 91.16 conv",
                          "none": "RotNet CIFAR-10 random init + conv: 72.50",
                          "supervised": "RotNet CIFAR-10 supervised NIN: 92.80"}
REFERENCE_ROTNET_LEGEND = (
    "**reference** of rows on the `nin` backbone with CIFAR-10 (RotNet's own setting, `experiment=rotnet_cifar_gpu`): "
    "RotNet's published CIFAR-10 top-1 from classifiers on frozen block-2 maps (non-linear MLP, conv block), "
    "not a linear probe and not measured here."
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
    """The record in ``path`` as a dict, checked by :class:`~pretextlab.results.ResultsRecord`.

    A file that is not a usable record becomes a failed row whose status names the file and the
    problem; so does a finished pretext job that ran no pretraining step (its backbone is random
    init: it must not be reported under its task's name).
    """
    try:
        checked = ResultsRecord.read(path)
    except ResultsError as error:
        kind = "unreadable" if "not valid JSON" in str(error) or "cannot be read" in str(error) else "invalid"
        record: dict[str, Any] = {"status": f"failed: {kind} results.json at {error}"}
    else:
        record = checked.to_dict()
        if checked.untrained:
            record["status"] = (f"failed: task {checked.task} ran 0 pretraining steps, so its backbone is random init "
                                f"({path}); re-run it with trainer.max_epochs >= 1")
    record["_path"] = str(path)
    return record


def collect_results(directories: list[Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` below ``directories``, in order (directory by directory, paths sorted)."""
    found: list[dict[str, Any]] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.exists():
            raise FileNotFoundError(f"sweep directory {directory} does not exist")
        for path in sorted(directory.rglob(RESULTS_FILE)):
            record = _read_record(path)
            record["_source"] = str(directory)
            found.append(record)
    return found


def _identity(record: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("task", "backbone", "data", "seed")
    if all(record.get(k) is None for k in keys):
        return ("path", record["_path"])  # nothing to merge on: keep it as its own row
    return (*(record.get(k) for k in keys), variant_identity(record))


def merge_results(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (task, backbone, data, seed, task variant and budget): a later record overrides an
    earlier one; two variants of a task (e.g. jigsaw 2×2 and 3×3) are two records, never one."""
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
    variant: str = ""   # the task's settings that set this row apart (e.g. "2×2" for a jigsaw grid)
    budget: str = ""    # pretraining budget, epochs × images
    floor: str = ""     # the key of the random-init row this row is compared with (same backbone, data, eval)

    @property
    def label(self) -> str:
        name = TASK_LABELS.get(str(self.task), "unknown" if self.task is None else str(self.task))
        name = f"{name} {self.variant}" if self.variant else name
        return f"{name} ({self.budget})" if self.budget else name

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
    groups: dict[tuple[Any, ...], Row] = {}
    failed: list[Row] = []
    variants = row_variants(records)
    for index, record in enumerate(records):
        key = (record.get("task"), record.get("backbone"), record.get("data"))
        variant, budget, floor = variants[index], pretraining_budget(record), floor_key(record)
        if not _ok(record):
            status = str(record.get("status") or "failed: no status recorded")
            if not status.startswith("failed"):
                status = f"failed: job ended with status {status!r}"
            first_line = (status.splitlines() or ["failed"])[0]
            failed.append(Row(*key, records=[record], failed=True, status=first_line, variant=variant, budget=budget,
                              floor=floor))
            continue
        row = groups.setdefault((*key, variant, budget, floor),
                                Row(*key, records=[], variant=variant, budget=budget, floor=floor))
        row.records.append(record)
        values, texts = {**_record_values(record)[0], **stage_values(record)}, _record_values(record)[1]
        for name, value in values.items():
            row.values.setdefault(name, []).append(value)
        for name, text in texts.items():
            row.texts.setdefault(name, []).append(text)
    combos = list(dict.fromkeys((str(r.data), str(r.backbone)) for r in [*groups.values(), *failed]))

    def order(row: Row) -> tuple[Any, ...]:
        # Random init first and supervised last across the whole table (the classic reading order);
        # the same task on several backbones/datasets stays together, in order of appearance.
        return (_task_rank(row.task), combos.index((str(row.data), str(row.backbone))), str(row.task), row.failed)

    rows = sorted([*groups.values(), *failed], key=order)
    attach_floor_deltas(rows)
    return rows


# -- rows: task variants, pretraining budgets and each backbone's own random-init floor -----------------
#: Task settings always named in a row label, with their short form (other task settings are named
#: only where rows of one task differ in them).
VARIANT_FORMATS: dict[str, Any] = {"grid": lambda value: f"{value}×{value}"}
#: Config keys that never make a variant: they differ between seeds or do not change what is learned.
NOT_VARIANT_KEYS = {"seed", "name", "_target_", "panel_images", "online_probe", "online_probe_features", "probe_lr"}
#: Config keys left out of the floor's identity (they differ between seeds or concern only pretraining).
NOT_FLOOR_KEYS = {"seed", "num_pretrain", "batch_size", "num_workers", "pin_memory", "on_device", "crop_padding",
                  "horizontal_flip"}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _task_settings(record: dict[str, Any]) -> dict[str, str]:
    task = (record.get("config") or {}).get("task")
    if not isinstance(task, dict):
        return {}
    return {key: json.dumps(value, sort_keys=True) for key, value in _flatten(task).items()
            if key.split(".")[-1] not in NOT_VARIANT_KEYS}


def variant_identity(record: dict[str, Any]) -> str:
    """Everything that makes two jobs of one (task, backbone, data, seed) different experiments."""
    return json.dumps(_task_settings(record), sort_keys=True) + "|" + pretraining_budget(record)


def row_variants(records: list[dict[str, Any]]) -> list[str]:
    """Each record's variant text: the task settings of :data:`VARIANT_FORMATS`, plus every task setting
    whose value differs between records of the same (task, backbone, data), as ``key=value``."""
    settings = [_task_settings(record) for record in records]
    differing: dict[tuple[Any, Any, Any], set[str]] = {}
    for record, mine in zip(records, settings):
        key = (record.get("task"), record.get("backbone"), record.get("data"))
        differing.setdefault(key, set())
    for key in differing:
        members = [mine for record, mine in zip(records, settings)
                   if (record.get("task"), record.get("backbone"), record.get("data")) == key]
        names = set().union(*(m.keys() for m in members)) if members else set()
        differing[key] = {n for n in names if len({m.get(n) for m in members}) > 1}
    variants = []
    for record, mine in zip(records, settings):
        parts = [VARIANT_FORMATS[name](json.loads(mine[name])) for name in VARIANT_FORMATS if name in mine]
        key = (record.get("task"), record.get("backbone"), record.get("data"))
        parts += [f"{name}={json.loads(mine[name]) if name in mine else '–'}" for name in sorted(differing[key])
                  if name not in VARIANT_FORMATS]
        variants.append(" ".join(parts))
    return variants


def _count_text(count: int) -> str:
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else f"{count:,}"


def pretraining_budget(record: dict[str, Any]) -> str:
    """``"10 ep × 10k img"``: configured pretraining epochs × pretraining images (empty for random init,
    ``"no pretraining"`` for another row that trains nothing, epochs alone when the record does not say
    how many images)."""
    config = record.get("config") or {}
    epochs = (config.get("trainer") or {}).get("max_epochs", record.get("epochs"))
    images = record.get("pretrain_images")
    if images is None:
        data = config.get("data") or {}
        images = data.get("num_pretrain") or (data.get("source") or {}).get("num_train")
    if record.get("task") == "none":
        return ""  # "random init" says it
    if epochs == 0 or images == 0:
        return "no pretraining"
    if not isinstance(epochs, int):
        return ""
    return f"{epochs} ep × {_count_text(int(images))} img" if isinstance(images, int) else f"{epochs} ep"


def _without(tree: Any, keys: set[str]) -> Any:
    if isinstance(tree, dict):
        return {k: _without(v, keys) for k, v in tree.items() if k not in keys}
    return tree


def floor_key(record: dict[str, Any]) -> str:
    """What a row and its random-init floor must share: backbone, data and evaluation (their names and,
    where the record holds its config, their settings), never the seed or pretraining-only settings."""
    config = record.get("config") or {}
    shared = {"backbone": record.get("backbone"), "data": record.get("data")}
    for part in ("backbone", "data", "eval"):
        if isinstance(config.get(part), dict):
            shared[f"{part}_config"] = _without(config[part], NOT_FLOOR_KEYS)
    return json.dumps(shared, sort_keys=True, default=str)


def stage_values(record: dict[str, Any]) -> dict[str, float]:
    """Per-stage linear-probe test top-1 (``"<protocol>@<stage>"``, %) and dims (``"dim@<stage>"``)."""
    values: dict[str, float] = {}
    for name, result in (record.get("eval") or {}).items():
        if not isinstance(result, dict) or not _is_linear_like(result):
            continue
        for stage, stage_result in (result.get("per_stage") or {}).items():
            if isinstance(stage_result, dict) and isinstance(stage_result.get("top1"), (int, float)):
                values[f"{name}@{stage}"] = 100 * float(stage_result["top1"])
                if name == "linear" and isinstance(stage_result.get("dim"), int):
                    values[f"dim@{stage}"] = float(stage_result["dim"])
    return values


def _floors(rows: list[Row]) -> dict[str, Row]:
    return {row.floor: row for row in rows if str(row.task) == "none" and not row.failed}


def attach_floor_deltas(rows: list[Row]) -> None:
    """``row.values["floor_delta"]``: best-stage linear top-1 minus that of the random-init row of the
    row's own backbone, data and evaluation (mean over seeds); rows without such a floor get none."""
    floors = _floors(rows)
    for row in rows:
        floor = floors.get(row.floor)
        if row.failed or floor is None or floor is row:
            continue
        mine, base = row.values.get("linear:best"), floor.values.get("linear:best")
        if mine and base:
            row.values["floor_delta"] = [statistics.fmean(mine) - statistics.fmean(base)]


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
    floors = _floors(rows)
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
        return REFERENCE_ROTNET_CIFAR.get(str(row.task), "–")
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
            mean, std = _mean_std(values) if values else (None, None)
            if column.key == "pretext":
                label = (row.texts.get("pretext_metric") or [""])[0]
                line += [label, _round(mean), _round(std)]
                continue
            line += [_round(mean), _round(std)]
            if column.stage_key:
                line.append(_stage_text(row, column.stage_key) if not row.failed else "")
        reference = None if _is_rotnet_setting(row) else REFERENCE_IMAGENET_LINEAR.get(str(row.task))
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
