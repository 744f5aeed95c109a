"""Sweep directories → the transfer-performance table (table.md, table.csv, table.png).

    python -m pretextlab.table outputs/sweeps/<sweep> [more sweep dirs ...] [--output DIR]
    python -m pretextlab.table outputs/sweeps/<sweep> --wandb --wandb-project pretextlab --wandb-group <group>

Collects every ``results.json`` below the given directories (a later directory overrides an earlier
one for the same task, backbone, data and seed), averages seeds (mean ± std), orders rows from
random init through the pretext tasks to supervised, and prints the Markdown table with a legend
that names the protocol behind every column. Results of ``python -m pretextlab.evaluate`` (a
pretrained backbone evaluated on other data) become transfer columns of their pretraining rows
(:mod:`pretextlab.table.transfer`).

The package: :mod:`~pretextlab.table.collect` (records → rows), :mod:`~pretextlab.table.render`
(columns, Markdown, CSV), :mod:`~pretextlab.table.plot` (the bar chart),
:mod:`~pretextlab.table.wandb_summary` (the W&B copy), :mod:`~pretextlab.table.transfer` (transfer
columns), :mod:`~pretextlab.table.task_facts` (what each row's task says about itself) and
:mod:`~pretextlab.table.cli` (:func:`build_table` and the command line).
"""


from pretextlab.table.cli import build_table, main

__all__ = ["build_table", "main"]
