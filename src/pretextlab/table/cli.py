"""``python -m pretextlab.table``: sweep directories → table.md, table.csv, table.png (+ a W&B summary)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pretextlab.io import atomic_write_bytes, atomic_write_text
from pretextlab.table.collect import build_rows, collect_results, merge_results
from pretextlab.table.plot import bar_chart_png
from pretextlab.table.render import build_columns, to_csv, to_markdown
from pretextlab.table.transfer import add_transfer_columns, split_transfer_records
from pretextlab.table.wandb_summary import log_to_wandb

#: The package's summary line, shown by ``--help``.
DESCRIPTION = "Sweep directories → the transfer-performance table (table.md, table.csv, table.png)."


def build_table(directories: list[Path], output_dir: Path | None = None, wandb: dict[str, Any] | None = None) -> str:
    """Write ``table.md``, ``table.csv`` and ``table.png`` into ``output_dir`` (default: the first
    directory) and return the Markdown. ``wandb={"project": ..., "group": ..., "entity": ...}`` also
    logs the table to a W&B summary run (offline without an API key; failures only warn)."""
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
    parser = argparse.ArgumentParser(prog="python -m pretextlab.table", description=DESCRIPTION)
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
