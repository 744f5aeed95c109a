"""Transfer columns of the table: results of ``python -m pretextlab.evaluate`` on their pretraining row.

An evaluation's ``results.json`` (``"kind": "transfer"``, read and checked like every record by
:class:`pretextlab.results.ResultsRecord` in :func:`pretextlab.table.collect.collect_results`) names the
pretrained backbone it evaluated (``pretrained``: path, run directory, task, backbone, pretraining
data, seed, and the run's task settings and budget) and the data it was evaluated on (``data``).
The table puts it on the row of that pretraining, in a column per (evaluation data, protocol):
"pretrained on the row's data, evaluated on Y". The row is the one holding the run directory
itself; else (the directories were moved) the row of the same task, backbone, data, task settings
and budget (``rotation (1 ep × 128 img)``); else, for an export whose run is unknown, the only row
of that task, backbone and data. Seeds of the pretrained runs average like the row's own. An
evaluation whose pretraining run is not among the table's directories gets a row of its own,
labelled with its budget where known (its other cells empty).

A column evaluated at an image size other than the backbone's own says so in its header, and each
cell names the backbone's size (e.g. ``block3; 32 px backbone``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pretextlab.results import TRANSFER_KIND
from pretextlab.table.collect import Row, pretraining_budget, row_variants, task_rank, variant_identity
from pretextlab.table.render import Column

KEY_PREFIX = "transfer:"


def is_transfer(record: dict[str, Any]) -> bool:
    return record.get("kind") == TRANSFER_KIND


def split_transfer_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(pretraining records, evaluation records)``, each in the order given."""
    return [r for r in records if not is_transfer(r)], [r for r in records if is_transfer(r)]


def _pretrained(record: dict[str, Any]) -> dict[str, Any]:
    value = record.get("pretrained")
    return value if isinstance(value, dict) else {}


def _size_note(record: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(evaluated size, backbone's size)`` when they differ, else ``(None, None)``."""
    source = record.get("input")
    if not isinstance(source, dict):
        return None, None
    size, own = source.get("image_size"), source.get("pretrained_image_size")
    if isinstance(size, int) and isinstance(own, int) and size != own:
        return size, own
    return None, None


def _metrics(result: dict[str, Any]) -> tuple[str, float, str | None] | None:
    """``(label, value in %, stage)`` of one protocol's result: mAP for SVMs, else top-1."""
    if isinstance(result.get("map"), (int, float)):
        return "mAP", 100 * float(result["map"]), result.get("best_stage")
    if isinstance(result.get("top1"), (int, float)):
        return "top-1", 100 * float(result["top1"]), result.get("best_stage")
    return None


def merge_transfer_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (pretrained run, evaluation data, protocols, image size, eval seed); later wins."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        pretrained = _pretrained(record)
        key = (pretrained.get("path"), pretrained.get("task"), pretrained.get("backbone"), pretrained.get("data"),
               pretrained.get("seed"), record.get("data"), tuple(sorted((record.get("eval") or {}).keys())),
               (record.get("input") or {}).get("image_size") if isinstance(record.get("input"), dict) else None,
               record.get("seed"))
        merged[key] = record
    return list(merged.values())


def _header(protocol: str, label: str, data: str, size: int | None) -> str:
    names = {"linear": "linear", "knn": "kNN", "finetune": "fine-tune", "voc07_svm": "VOC07 SVM"}
    at = f" at {size} px" if size is not None else ""
    return f"{names.get(protocol, protocol)} {label} % on {data}{at}"


def _legend(protocol: str, result: dict[str, Any], data: str, size: int | None) -> str:
    at = (f", its images resized to {size} px, a size other than the backbone's own (named in each cell)"
          if size is not None else ", at the backbone's own image size")
    if protocol == "voc07_svm" or "map" in result:
        how = (f"one linear SVM per class on L2-normalised frozen features of every stage, its cost chosen per class "
               f"by {result.get('cross_val_folds', '?')}-fold cross-validation on the training split; test mAP "
               f"({result.get('ap_metric', '?')} AP), the stage with the best cross-validated mAP in brackets")
    elif "best_stage" in result:
        how = ("offline linear probe on frozen features of every stage (lr/weight decay and stage chosen on a "
               "validation split carved from train); test top-1, the stage in brackets")
    elif protocol == "knn":
        how = f"weighted k-NN (k={result.get('k', '?')}) on frozen features; test top-1"
    else:
        how = f"protocol `{protocol}`; test top-1"
    return (f"**{_header(protocol, 'mAP' if 'map' in result else 'top-1', data, size)}** — transfer: the row's "
            f"backbone, pretrained on the row's data, evaluated on {data} by `python -m pretextlab.evaluate`{at}; "
            f"inputs prepared as in pretraining (its normalisation, or L for colorization); {how}.")


def pretraining_record(record: dict[str, Any]) -> dict[str, Any]:
    """The pretraining record an evaluation describes, as far as it knows it: identity, the run's task
    settings and budget (what :func:`pretextlab.table.collect.variant_identity` and ``pretraining_budget`` read)."""
    pretrained = _pretrained(record)
    run_config = pretrained.get("run_config")
    return {"status": "ok", "task": pretrained.get("task"), "backbone": pretrained.get("backbone"),
            "data": pretrained.get("data"), "seed": pretrained.get("seed"),
            "config": run_config if isinstance(run_config, dict) else {},
            "pretrain_images": pretrained.get("pretrain_images"), "epochs": pretrained.get("epochs")}


def _resolved(path: Any) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return None


class _RowFinder:
    """The pretraining row of an evaluation (see the module doc for the order of the rules)."""

    def __init__(self, rows: list[Row]) -> None:
        self.by_dir: dict[str, Row] = {}
        self.by_variant: dict[tuple[Any, ...], Row] = {}
        self.by_identity: dict[tuple[Any, Any, Any], list[Row]] = {}
        for row in rows:
            if row.failed:
                continue
            for record in row.records:
                run_dir = _resolved(str(Path(record["_path"]).parent)) if record.get("_path") else None
                if run_dir is not None:
                    self.by_dir[run_dir] = row
                self.by_variant[(row.task, row.backbone, row.data, variant_identity(record))] = row
            self.by_identity.setdefault((row.task, row.backbone, row.data), []).append(row)

    def find(self, record: dict[str, Any]) -> Row | None:
        pretrained = _pretrained(record)
        run_dir = _resolved(pretrained.get("run_dir"))
        if run_dir is not None and run_dir in self.by_dir:
            return self.by_dir[run_dir]
        identity = (pretrained.get("task"), pretrained.get("backbone"), pretrained.get("data"))
        if isinstance(pretrained.get("run_config"), dict):  # the run's settings and budget are known
            return self.by_variant.get((*identity, variant_identity(pretraining_record(record))))
        candidates = self.by_identity.get(identity, [])
        return candidates[0] if len(candidates) == 1 else None


def _own_row(record: dict[str, Any]) -> Row:
    """A row for evaluations whose pretraining run is not in the table, labelled as its run would be."""
    pretrained = pretraining_record(record)
    known = bool(pretrained["config"])
    return Row(pretrained["task"], pretrained["backbone"], pretrained["data"], records=[],
               variant=row_variants([pretrained])[0] if known else "",
               budget=pretraining_budget(pretrained) if known else "")


def add_transfer_columns(rows: list[Row], columns: list[Column],
                         transfers: list[dict[str, Any]]) -> tuple[list[Row], list[Column], list[str]]:
    """Attach the evaluations to their pretraining rows; returns rows, columns and notes for the legend.

    Transfer columns go before the pretext-metric column (after the row's own protocols). Failed
    evaluations are listed in the notes, never averaged.
    """
    notes: list[str] = []
    by_key: dict[str, dict[str, Any]] = {}  # column key -> {"header", "legend", "csv"}
    finder = _RowFinder(rows)
    own_rows: dict[tuple[Any, ...], Row] = {}
    per_row: dict[int, tuple[Row, dict[str, list[tuple[float, str | None, int | None, Any]]]]] = {}
    for record in merge_transfer_records(transfers):
        pretrained = _pretrained(record)
        if record.get("status") != "ok":
            status = (str(record.get("status") or "failed").splitlines() or ["failed"])[0]
            notes.append(f"evaluation of `{pretrained.get('path', '?')}` on {record.get('data', '?')} "
                         f"({record.get('_path', '?')}): {status}")
            continue
        row = finder.find(record)
        if row is None:
            source = pretraining_record(record)
            own_key = (source["task"], source["backbone"], source["data"], variant_identity(source))
            row = own_rows.get(own_key)
            if row is None:
                row = own_rows[own_key] = _own_row(record)
                rows.append(row)
        if row.records == [] or all(r.get("_transfer_only") for r in row.records):
            seed = pretrained.get("seed")
            if seed not in [r.get("seed") for r in row.records]:
                row.records.append({"task": row.task, "backbone": row.backbone, "data": row.data, "seed": seed,
                                    "_transfer_only": True})
        size, own = _size_note(record)
        for protocol, result in (record.get("eval") or {}).items():
            if not isinstance(result, dict) or (metric := _metrics(result)) is None:
                continue
            label, value, stage = metric
            key = f"{KEY_PREFIX}{record.get('data')}:{protocol}" + (f"@{size}" if size is not None else "")
            by_key.setdefault(key, {"header": _header(protocol, label, str(record.get("data")), size),
                                    "legend": _legend(protocol, result, str(record.get("data")), size),
                                    "csv": "transfer_" + key.removeprefix(KEY_PREFIX).replace(":", "_").replace("@", "_at")
                                    + ("_map" if label == "mAP" else "_top1")})
            cells = per_row.setdefault(id(row), (row, {}))[1]
            cells.setdefault(key, []).append((value, stage, own, pretrained.get("seed")))
    if not by_key:
        return rows, columns, notes

    for row, cells in per_row.values():
        row_seeds = sorted({str(s) for s in row.seeds})
        for key, entries in cells.items():
            row.values[key] = [value for value, _, _, _ in entries]
            stages = Counter(str(stage) for _, stage, _, _ in entries if stage is not None)
            parts = [stages.most_common(1)[0][0] if len(stages) == 1 else
                     "/".join(f"{s}×{n}" for s, n in stages.most_common())] if stages else []
            owns = sorted({own for _, _, own, _ in entries if own is not None})
            if owns:
                parts.append(f"{'/'.join(map(str, owns))} px backbone")
            seeds = sorted({str(seed) for _, _, _, seed in entries})
            if seeds != row_seeds:
                parts.append(f"seed{'s' if len(seeds) > 1 else ''} {','.join(seeds)}")
            row.texts[f"{key}:stage"] = ["; ".join(parts)] if parts else []
    rows.sort(key=task_rank)  # stable: the rows' own order stays within a task

    new_columns = [Column(key, spec["header"], spec["csv"], spec["legend"],
                          stage_key=f"{key}:stage") for key, spec in sorted(by_key.items())]
    at = next((i for i, column in enumerate(columns) if column.key == "pretext"), len(columns))
    return rows, columns[:at] + new_columns + columns[at:], notes
