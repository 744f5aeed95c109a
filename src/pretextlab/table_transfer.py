"""Transfer columns of the table: results of ``python -m pretextlab.evaluate`` on their pretraining row.

An evaluation's ``results.json`` (``"kind": "transfer"``) names the pretrained backbone it evaluated
(``pretrained``: task, backbone, pretraining data, seed) and the data it was evaluated on (``data``).
The table puts it on the row of that pretraining (task, backbone, pretraining data), in a column
per (evaluation data, protocol): "pretrained on the row's data, evaluated on Y". Seeds of the
pretrained runs average like the row's own. An evaluation whose pretraining run is not among the
table's directories gets a row of its own (its other cells empty).

A column evaluated at an image size other than the backbone's own says so in its header, and each
cell names the backbone's size (e.g. ``block3; 32 px backbone``).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pretextlab.table import Column, Row

TRANSFER_KIND = "transfer"
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


def add_transfer_columns(rows: list[Row], columns: list[Column],
                         transfers: list[dict[str, Any]]) -> tuple[list[Row], list[Column], list[str]]:
    """Attach the evaluations to their pretraining rows; returns rows, columns and notes for the legend.

    Transfer columns go before the pretext-metric column (after the row's own protocols). Failed
    evaluations are listed in the notes, never averaged.
    """
    from pretextlab.table import Column, Row, _task_rank

    notes: list[str] = []
    by_key: dict[str, dict[str, Any]] = {}  # column key -> {"header", "legend", "size"}
    per_row: dict[tuple[Any, Any, Any], dict[str, list[tuple[float, str | None, int | None, Any]]]] = {}
    for record in merge_transfer_records(transfers):
        pretrained = _pretrained(record)
        if record.get("status") != "ok":
            status = (str(record.get("status") or "failed").splitlines() or ["failed"])[0]
            notes.append(f"evaluation of `{pretrained.get('path', '?')}` on {record.get('data', '?')} "
                         f"({record.get('_path', '?')}): {status}")
            continue
        row_key = (pretrained.get("task"), pretrained.get("backbone"), pretrained.get("data"))
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
            per_row.setdefault(row_key, {}).setdefault(key, []).append((value, stage, own, pretrained.get("seed")))
    if not by_key:
        return rows, columns, notes

    index = {(row.task, row.backbone, row.data): row for row in rows if not row.failed}
    for row_key, cells in per_row.items():
        row = index.get(row_key)
        if row is None:  # the pretraining run is not in the table: a row of its own
            seeds = sorted({entry[3] for entry_list in cells.values() for entry in entry_list}, key=str)
            row = Row(*row_key, records=[{"task": row_key[0], "backbone": row_key[1], "data": row_key[2], "seed": s,
                                          "_transfer_only": True} for s in seeds])
            rows.append(row)
            index[row_key] = row
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
    rows.sort(key=lambda row: _task_rank(row.task))  # stable: the rows' own order stays within a task

    new_columns = [Column(key, spec["header"], spec["csv"], spec["legend"],
                          stage_key=f"{key}:stage") for key, spec in sorted(by_key.items())]
    at = next((i for i, column in enumerate(columns) if column.key == "pretext"), len(columns))
    return rows, columns[:at] + new_columns + columns[at:], notes

