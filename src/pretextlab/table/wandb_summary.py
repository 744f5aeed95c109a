"""The table logged to a W&B summary run (``python -m pretextlab.table --wandb``)."""

from __future__ import annotations

import csv
import io
import statistics
import warnings
from pathlib import Path
from typing import Any, cast

from pretextlab.table.collect import Row
from pretextlab.table.render import Column, csv_header, to_csv


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
