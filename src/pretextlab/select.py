"""Choose a table row's settings on validation only, with the same search budget for every row.

    pretextlab select --config-dir conf experiment=table_cifar10_cpu task=jigsaw [hydra overrides]
    pretextlab select --config-dir conf experiment=table_cifar10_cpu task=jigsaw --epochs 2 --write

For the task's variants (``select/spaces.yaml``: two per task) × epoch multipliers (the same
for every task, so every row gets the same budget of pretraining epochs), one run is pretrained
and probed per candidate. The score is the linear probe's **validation** top-1 (its best stage,
lr and weight decay are themselves chosen on a split carved from train). The test split is never
loaded: every candidate's data source is a :class:`HoldoutSource`, whose "test" split is a
stratified held-out part of train, so even the probe's final score here is a validation figure.

The candidates and their figures go to ``<out>/<task>/selection.json``; ``--write`` also writes
``<config dir>/experiment_task/<experiment>_<task>.yaml`` (the chosen overrides as keys, the command,
budget and every candidate's validation figures as comments). Test is scored once, afterwards,
by the ordinary table run with that preset.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pretextlab.config import compose_train
from pretextlab.paths import config_dir
from pretextlab.data.sources import DataSource, Split, SplitName
from pretextlab.evaluation.splits import stratified_split
from pretextlab.io import atomic_write_json

log = logging.getLogger("pretextlab.select")

SPACES_FILE = "select/spaces.yaml"


class SelectError(ValueError):
    """A selection that cannot run (unknown task, no space, bad budget): the message names the fix."""


class HoldoutSource(DataSource):
    """``base`` with its test split replaced by a stratified ``fraction`` of its train split.

    "train" is the rest of train; "pretrain" is the base's pretraining split without the held-out
    images when it is the train split itself (CIFAR, image folders, synthetic), else unchanged
    (e.g. STL-10's unlabeled images). Nothing of the base's test split is ever read.
    """

    def __init__(self, base: DataSource, fraction: float = 0.1, seed: int = 0) -> None:
        self.base = base
        self.fraction = float(fraction)
        self.seed = int(seed)
        self.name = f"{base.name}-holdout"
        self.num_classes = base.num_classes
        self.image_size = base.image_size
        self.mean = base.mean
        self.std = base.std
        self._parts: tuple[torch.Tensor, torch.Tensor] | None = None

    def _split_indices(self, train: Split) -> tuple[torch.Tensor, torch.Tensor]:
        if self._parts is None:
            self._parts = stratified_split(train.labels, self.fraction, self.seed)
        return self._parts

    def _load(self, split: SplitName) -> Split:
        train = self.base.load("train")
        fit, held = self._split_indices(train)
        if split == "test":
            return Split(train.images[held], train.labels[held])
        if split == "train":
            return Split(train.images[fit], train.labels[fit])
        pretrain = self.base.load("pretrain")
        if pretrain is train or (len(pretrain) == len(train) and torch.equal(pretrain.labels, train.labels)):
            return Split(train.images[fit], train.labels[fit])
        return pretrain


@dataclass
class Candidate:
    name: str
    overrides: list[str]
    epochs: int


def load_space(task: str, config_dirs: Sequence[Path] = ()) -> tuple[dict[str, list[str]], list[float]]:
    """The task's variants and the shared epoch multipliers from ``select/spaces.yaml``: the packaged
    file merged with the same file of each user config folder (theirs win), so a user's own task can
    bring its space while the epoch multipliers stay the packaged ones unless a folder changes them."""
    spaces = OmegaConf.load(config_dir() / SPACES_FILE)
    for folder in config_dirs:
        if (Path(folder) / SPACES_FILE).is_file():
            spaces = OmegaConf.merge(spaces, OmegaConf.load(Path(folder) / SPACES_FILE))
    variants = spaces.variants.get(task)
    if variants is None:
        raise SelectError(f"task={task} has no search space in {SPACES_FILE}; tasks with one: "
                          f"{sorted(spaces.variants)} (a config folder of yours given with --config-dir may "
                          f"add one under variants.{task})")
    plain = {str(k): [str(o) for o in v] for k, v in variants.items()}
    return plain, [float(f) for f in spaces.epoch_factors]


def candidates(task: str, base_epochs: int, config_dirs: Sequence[Path] = ()) -> list[Candidate]:
    """Every (variant, epochs) pair of the task's space, in a fixed order."""
    if base_epochs < 1:
        raise SelectError(f"the preset trains {base_epochs} epochs; selection needs trainer.max_epochs >= 1")
    variants, factors = load_space(task, config_dirs)
    out = []
    for name, overrides in variants.items():
        for factor in factors:
            epochs = max(1, round(base_epochs * factor))
            out.append(Candidate(f"{name}-e{epochs}", overrides, epochs))
    return out


#: Drops the preset's per-task record (conf/experiment_task/...): selection starts from the preset alone.
WITHOUT_RECORD = "~experiment_task"


def compose_without_record(overrides: list[str], config_dirs: Sequence[Path] = ()) -> DictConfig:
    """Compose without the preset's per-task record, when there is one (Hydra refuses to drop a missing one)."""
    from hydra.errors import ConfigCompositionException

    plain = [o for o in overrides if o != WITHOUT_RECORD]
    try:
        return compose_train([*plain, WITHOUT_RECORD], config_dirs=config_dirs)
    except ConfigCompositionException as error:
        if "experiment_task" not in str(error):
            raise
        return compose_train(plain, config_dirs=config_dirs)


def experiment_name(overrides: list[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), None)


def candidate_config(overrides: list[str], candidate: Candidate, run_dir: Path, holdout: float,
                     config_dirs: Sequence[Path] = ()) -> DictConfig:
    """The composed config of one candidate: linear probe only, test swapped for a held-out part of train."""
    cfg = compose_without_record([*overrides, *candidate.overrides, f"trainer.max_epochs={candidate.epochs}"],
                                 config_dirs)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
        protocols = cfg.eval.protocols or {}
        if "linear" not in protocols:
            raise SelectError("selection scores candidates by the linear probe: use an eval with eval.protocols.linear")
        cfg.eval.protocols = {"linear": protocols["linear"]}
        cfg.eval.headline = "linear/val_top1"
        source = OmegaConf.to_container(cfg.data.source, resolve=True)
        cfg.data.source = {"_target_": "pretextlab.select.HoldoutSource", "base": source, "fraction": holdout,
                           "seed": int(cfg.seed)}
    return cfg


def score(results: dict[str, Any]) -> dict[str, Any]:
    """The validation figures of one finished candidate (no test figure exists in a selection run)."""
    linear = (results.get("eval") or {}).get("linear") or {}
    return {
        "val_top1": linear.get("val_top1"),
        "best_stage": linear.get("best_stage"),
        "holdout_top1": linear.get("top1"),  # on the held-out part of TRAIN, not test
        "pretext": results.get("pretext", {}),
        "minutes": (results.get("wall_time") or {}).get("total", 0.0) / 60,
    }


def run_selection(overrides: list[str], out: Path, holdout: float = 0.1,
                  epochs: int | None = None, config_dirs: Sequence[Path] = ()) -> dict[str, Any]:
    """Pretrain and probe every candidate; returns the selection record (also saved as JSON)."""
    from pretextlab.train import run

    base = compose_without_record(overrides, config_dirs)
    task = str(base.task.name)
    base_epochs = int(epochs if epochs is not None else base.trainer.max_epochs)
    folder = out / task
    entries = []
    started = time.perf_counter()
    for candidate in candidates(task, base_epochs, config_dirs):
        cfg = candidate_config(overrides, candidate, folder / candidate.name, holdout, config_dirs)
        results = run(cfg)
        if results.get("status") != "ok":
            raise SelectError(f"candidate {candidate.name} failed: {results.get('status')}")
        entry = {"name": candidate.name, "overrides": candidate.overrides, "epochs": candidate.epochs,
                 **score(results)}
        log.info("candidate %s: validation top-1 %s", candidate.name, entry["val_top1"])
        entries.append(entry)
    scored = [e for e in entries if isinstance(e["val_top1"], (int, float))]
    if not scored:
        raise SelectError("no candidate has a validation score (is the validation split empty?)")
    best = max(scored, key=lambda e: e["val_top1"])  # the first maximum: ties keep the space's order
    record = {
        "task": task,
        "experiment": experiment_name(overrides),
        "overrides": overrides,
        "holdout_fraction": holdout,
        "base_epochs": base_epochs,
        "budget_epochs": sum(e["epochs"] for e in entries),
        "pretrain_images": base.data.get("num_pretrain"),
        "candidates": entries,
        "chosen": best["name"],
        "chosen_overrides": [*best["overrides"], f"trainer.max_epochs={best['epochs']}"],
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(folder / "selection.json", record)
    return record


def experiment_task_yaml(record: dict[str, Any], command: str) -> str:
    """The ``conf/experiment_task`` record: chosen overrides as keys, validation figures as comments."""
    lines = [
        "# @package _global_",
        f"# {record['task']} in experiment={record['experiment']}: chosen on VALIDATION only by",
        f"#   {command}",
        f"# Budget (the same for every row): {len(record['candidates'])} candidates, "
        f"{record['budget_epochs']} pretraining epochs in all, {record['pretrain_images'] or 'all'} images; "
        "score = linear-probe validation top-1",
        f"# (split carved from train; the test split was never loaded). Candidates (val top-1 %, best stage):",
    ]
    for entry in record["candidates"]:
        mark = "  <- chosen" if entry["name"] == record["chosen"] else ""
        lines.append(f"#   {entry['name']}: {100 * entry['val_top1']:.1f} ({entry['best_stage']}){mark}")
    chosen = OmegaConf.to_yaml(OmegaConf.from_dotlist(record["chosen_overrides"]))
    return "\n".join(lines) + "\n" + chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pretextlab select", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (experiment=..., task=..., ...)")
    parser.add_argument("--out", type=Path, default=Path("outputs/select"), help="where candidate runs go")
    parser.add_argument("--holdout", type=float, default=0.1, help="share of train standing in for test")
    parser.add_argument("--epochs", type=int, default=None,
                        help="base epochs the multipliers apply to (default: the preset's trainer.max_epochs)")
    parser.add_argument("--config-dir", "-cd", dest="config_dirs", type=Path, action="append", default=[],
                        help="a config folder of yours joining the search path (repeatable); --write writes "
                             "into the first")
    parser.add_argument("--write", action="store_true",
                        help="write <first --config-dir>/experiment_task/<experiment>_<task>.yaml with the choice")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[select] %(message)s")
    try:
        missing = [str(folder) for folder in args.config_dirs if not folder.is_dir()]
        if missing:
            raise SelectError(f"--config-dir {missing[0]} is not a folder")
        if args.write and not args.config_dirs:
            raise SelectError("--write needs --config-dir <your config folder>: the packaged configs are not "
                              "written to (this repository's presets: --config-dir conf)")
        record = run_selection(list(args.overrides), args.out, args.holdout, args.epochs, args.config_dirs)
    except (ValueError, FileNotFoundError) as error:
        print(f"pretextlab: error: {error}", file=sys.stderr)
        return 2
    command = "pretextlab select " + " ".join([*(f"--config-dir {folder}" for folder in args.config_dirs),
                                                *args.overrides, *([f"--epochs {args.epochs}"] if args.epochs else [])])
    text = experiment_task_yaml(record, command)
    print(text)
    if args.write:
        if not record["experiment"]:
            print("pretextlab: error: --write needs experiment=<preset>", file=sys.stderr)
            return 2
        path = args.config_dirs[0] / "experiment_task" / f"{record['experiment']}_{record['task']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps({"chosen": record["chosen"], "chosen_overrides": record["chosen_overrides"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
