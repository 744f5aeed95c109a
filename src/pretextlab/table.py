"""Sweep directories → the transfer-performance table (table.md, table.csv).

    python -m pretextlab.table outputs/sweeps/<sweep>

Collects every ``results.json`` below the given directories, orders rows from random init to
supervised, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from pretextlab.io import atomic_write_text

#: Row order of the classic comparison: lower bound first, pretext tasks, upper bound last.
TASK_ORDER = ["none", "inpainting", "context", "colorization", "jigsaw", "rotation", "mae", "multitask", "supervised"]
TASK_LABELS = {"none": "random init", "supervised": "supervised"}


def collect_results(directories: list[Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` below ``directories`` (later directories override earlier ones)."""
    found: list[dict[str, Any]] = []
    for directory in directories:
        if not directory.exists():
            raise FileNotFoundError(f"sweep directory {directory} does not exist")
        for path in sorted(directory.rglob("results.json")):
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                record = {"status": f"failed: unreadable results.json ({error})"}
            record["_path"] = str(path)
            found.append(record)
    return found


def _row_key(record: dict[str, Any]) -> tuple[int, str]:
    task = str(record.get("task"))
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER) - 1, task)


def _fmt(value: Any, percent: bool = True) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if percent else f"{value:.0f}"
    return str(value)


COLUMNS = [
    ("task", "task"),
    ("linear_best", "linear top-1 (best stage) %"),
    ("best_stage", "best stage"),
    ("linear_last", "linear top-1 (last stage) %"),
    ("pretext", "pretext acc % (val)"),
    ("epochs", "epochs"),
    ("minutes", "wall time (min)"),
    ("status", "status"),
]


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for record in sorted(records, key=_row_key):
        task = str(record.get("task"))
        status = str(record.get("status", "unknown"))
        linear = (record.get("eval") or {}).get("linear") or {}
        pretext = (record.get("pretext") or {}).get("val_acc")
        minutes = (record.get("wall_time") or {}).get("total")
        rows.append({
            "task": TASK_LABELS.get(task, task),
            "linear_best": _fmt(linear.get("top1")),
            "best_stage": str(linear.get("best_stage", "–")),
            "linear_last": _fmt(linear.get("last_top1")),
            "pretext": _fmt(pretext),
            "epochs": str(record.get("epochs", "–")),
            "minutes": f"{minutes / 60:.1f}" if isinstance(minutes, (int, float)) else "–",
            "status": "ok" if status == "ok" else status,
        })
    return rows


def to_markdown(rows: list[dict[str, str]]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(row[key] for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body]) + "\n"


def to_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([title for _, title in COLUMNS])
    for row in rows:
        writer.writerow([row[key] for key, _ in COLUMNS])
    return buffer.getvalue()


def build_table(directories: list[Path], output_dir: Path | None = None) -> str:
    """Write ``table.md`` and ``table.csv`` into ``output_dir`` (default: the first directory)."""
    records = collect_results(directories)
    if not records:
        raise FileNotFoundError(f"no results.json found below {', '.join(map(str, directories))}")
    rows = table_rows(records)
    markdown = to_markdown(rows)
    target = output_dir or directories[0]
    atomic_write_text(target / "table.md", markdown)
    atomic_write_text(target / "table.csv", to_csv(rows))
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretextlab.table", description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path, help="sweep directories (merged in order)")
    parser.add_argument("--output", type=Path, default=None, help="where table files go (default: first directory)")
    args = parser.parse_args(argv)
    try:
        print(build_table(args.directories, args.output), end="")
    except FileNotFoundError as error:
        print(f"pretextlab.table: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
