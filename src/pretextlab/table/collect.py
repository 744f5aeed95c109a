"""The table's rows: every ``results.json`` below the sweep directories, read, merged and grouped.

A later directory overrides an earlier one for the same task, backbone, data, seed, task variant and
budget; seeds of one (task, backbone, data, variant, budget) become one row; each failed job is a
row of its own; every row knows the random-init row of its own backbone, data and evaluation (its
floor) and its per-stage linear-probe values.
"""

from __future__ import annotations

import json
import logging
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretextlab.results import RESULTS_FILE, ResultsError, ResultsRecord
from pretextlab.table.task_facts import TaskFacts
from pretextlab.task_info import input_kind_of

log = logging.getLogger(__name__)


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


def task_rank(row: Row) -> float:
    """The row's place in the table: its task's declared order (random init first, supervised last)."""
    return row.facts.order


def is_linear_like(result: dict[str, Any]) -> bool:
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
    def facts(self) -> TaskFacts:
        """What the row's task says about itself (from its first pretraining record)."""
        own = [r for r in self.records if not r.get("_transfer_only")]
        return TaskFacts.of(own[0] if own else {"task": self.task})

    @property
    def label(self) -> str:
        name = self.facts.label
        name = f"{name} {self.variant}" if self.variant else name
        return f"{name} ({self.budget})" if self.budget else name

    @property
    def seeds(self) -> list[Any]:
        return [r.get("seed") for r in self.records]


def _record_values(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    values: dict[str, float] = {}
    texts: dict[str, str] = {}
    for name, result in (record.get("eval") or {}).items():
        if not isinstance(result, dict):
            continue
        if is_linear_like(result):
            if isinstance(result.get("top1"), (int, float)):
                values[f"{name}:best"] = 100 * float(result["top1"])
                texts[f"{name}:best_stage"] = str(result.get("best_stage"))
            if isinstance(result.get("last_top1"), (int, float)):
                values[f"{name}:last"] = 100 * float(result["last_top1"])
                texts[f"{name}:last_stage"] = str(result.get("last_stage"))
        elif isinstance(result.get("top1"), (int, float)):
            values[f"{name}:top1"] = 100 * float(result["top1"])
    pretext = TaskFacts.of(record).pretext_value(record.get("pretext") or {})
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
        return (task_rank(row), combos.index((str(row.data), str(row.backbone))), str(row.task), row.failed)

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
    """What makes a job a variant of its (task, backbone, data): the task's settings (``grid``), the
    backbone's (``backbone.width``) and the config options it was composed from (``experiment=…``,
    ``backbone=vit_small``; recorded as ``options`` in results.json), each as JSON text."""
    config = record.get("config") or {}
    settings: dict[str, str] = {}
    for part, prefix in (("task", ""), ("backbone", "backbone.")):
        node = config.get(part)
        if isinstance(node, dict):
            settings.update({prefix + key: json.dumps(value, sort_keys=True) for key, value in _flatten(node).items()
                             if key.split(".")[-1] not in NOT_VARIANT_KEYS})
    options = record.get("options")
    if isinstance(options, dict):
        settings.update({group: json.dumps(choice) for group, choice in options.items()
                         if choice is not None and group not in ("task", "backbone")})
    return settings


def variant_identity(record: dict[str, Any]) -> str:
    """Everything that makes two jobs of one (task, backbone, data, seed) different experiments."""
    return json.dumps(_task_settings(record), sort_keys=True) + "|" + pretraining_budget(record)


def row_variants(records: list[dict[str, Any]]) -> list[str]:
    """Each record's variant text: the task settings of :data:`VARIANT_FORMATS`, plus every task setting
    whose value differs between records of the same (task label, backbone, data), as ``key=value``.
    (By label: the task's own label already tells what it declares, e.g. "random init, L channel".)"""
    settings = [_task_settings(record) for record in records]
    keys = [(TaskFacts.of(record).label, record.get("backbone"), record.get("data")) for record in records]
    differing: dict[tuple[Any, Any, Any], set[str]] = {key: set() for key in keys}
    for key in differing:
        members = [mine for mine, other in zip(settings, keys) if other == key]
        names = set().union(*(m.keys() for m in members)) if members else set()
        differing[key] = {n for n in names if len({m.get(n) for m in members}) > 1}
    variants = []
    for key, mine in zip(keys, settings):
        parts = [VARIANT_FORMATS[name](json.loads(mine[name])) for name in VARIANT_FORMATS if name in mine]
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
    """What a row and its random-init floor must share: backbone, data, evaluation (their names and,
    where the record holds its config, their settings) and the backbone's input kind (colorization's L
    channel), never the seed or pretraining-only settings."""
    config = record.get("config") or {}
    shared = {"backbone": record.get("backbone"), "data": record.get("data"), "input": input_kind_of(record)}
    for part in ("backbone", "data", "eval"):
        if isinstance(config.get(part), dict):
            shared[f"{part}_config"] = _without(config[part], NOT_FLOOR_KEYS)
    return json.dumps(shared, sort_keys=True, default=str)


def stage_values(record: dict[str, Any]) -> dict[str, float]:
    """Per-stage linear-probe test top-1 (``"<protocol>@<stage>"``, %) and dims (``"dim@<stage>"``)."""
    values: dict[str, float] = {}
    for name, result in (record.get("eval") or {}).items():
        if not isinstance(result, dict) or not is_linear_like(result):
            continue
        for stage, stage_result in (result.get("per_stage") or {}).items():
            if isinstance(stage_result, dict) and isinstance(stage_result.get("top1"), (int, float)):
                values[f"{name}@{stage}"] = 100 * float(stage_result["top1"])
                if name == "linear" and isinstance(stage_result.get("dim"), int):
                    values[f"dim@{stage}"] = float(stage_result["dim"])
    return values


def random_init_floors(rows: list[Row]) -> dict[str, Row]:
    return {row.floor: row for row in rows if str(row.task) == "none" and not row.failed}


def attach_floor_deltas(rows: list[Row]) -> None:
    """``row.values["floor_delta"]``: best-stage linear top-1 minus that of the random-init row of the
    row's own backbone, data and evaluation (mean over seeds); rows without such a floor get none."""
    floors = random_init_floors(rows)
    for row in rows:
        floor = floors.get(row.floor)
        if row.failed or floor is None or floor is row:
            continue
        mine, base = row.values.get("linear:best"), floor.values.get("linear:best")
        if mine and base:
            row.values["floor_delta"] = [statistics.fmean(mine) - statistics.fmean(base)]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)
