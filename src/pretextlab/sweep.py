"""The main job: pretrain every task of a sweep, evaluate each, and build the table.

    pretextlab sweep                                   # the default sweep on the embedded synthetic data
    pretextlab sweep data=cifar10 trainer.max_epochs=5 # extra Hydra overrides apply to every job
    pretextlab sweep --tasks none,rotation --vit-tasks ''
    pretextlab sweep -cd my_configs --tasks mytask,rotation   # a task of yours beside built-in ones

Without ``--tasks`` / ``--vit-tasks``, the sweep runs every packaged task whose class declares
``in_default_sweep``, in table order. Convolutional tasks run on the configured backbone (convnet by default); transformer tasks (MAE) run
on ``--vit-backbone`` in a second Hydra multirun into the same sweep directory, so one table shows all.
Each of the two gets a random-init row (``task=none``) of its own backbone, added when not listed: the
table compares every row with the random init of its own backbone. A task whose backbone reads other
input than RGB (colorization's 1-channel backbone reads the L channel) gets that backbone's random init
too: ``task=none task.in_channels=1``, in a multirun of its own (job ``0_none_1ch``).

The sweep directory (``./outputs/sweeps/sweep-<key>``) is named by the command, so the same command
finds the same directory: finished jobs are skipped and interrupted ones resume from their last
checkpoint. Jobs whose directory holds finished results of a different config are refused (left as
they were), and so are jobs another process is running: the sweep then exits 2 naming them, without
rebuilding the table (it would show old rows as if new). Both multiruns run even when the first fails.
Defaults come from the environment variables ``TASKS``, ``VIT_TASKS``, ``VIT_BACKBONE``, ``VIT_ARGS`` and
``SWEEP_DIR`` when set (the repository's ``multirun.sh`` passes them through).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pretextlab.config import quoted_value
from pretextlab.paths import config_dir, searchpath_override

DEFAULT_VIT_BACKBONE = "vit_tiny"
#: Applied to the transformer jobs before the user's overrides (which win). A ViT step costs far more
#: than a small convnet step on a CPU, so the default keeps MAE's pretraining short.
DEFAULT_VIT_ARGS = "data.num_pretrain=2000 trainer.max_epochs=3"
RANDOM_INIT = "none"
LOG_PREFIX = "[multirun]"


def default_tasks() -> tuple[list[str], list[str]]:
    """The default sweep: the packaged task configs whose class declares ``in_default_sweep``, in table
    order, as (tasks for the configured backbone, tasks that need a transformer backbone)."""
    from hydra.utils import get_class
    from omegaconf import DictConfig, OmegaConf

    chosen: list[tuple[float, str, bool]] = []
    for path in sorted((config_dir() / "task").glob("*.yaml")):
        if path.name.startswith("_"):
            continue  # shared defaults (_optim.yaml), not a task
        node = OmegaConf.load(path)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        task_class: Any = get_class(str(target))  # a packaged config naming no importable class is a bug: it raises
        if getattr(task_class, "in_default_sweep", False):
            chosen.append((float(task_class.table_order), path.stem, task_class.requires == "transformer"))
    chosen.sort()
    return [name for _, name, vit in chosen if not vit], [name for _, name, vit in chosen if vit]


def with_floor(tasks: str) -> str:
    """``tasks`` with the random-init row first unless it is listed (empty stays empty)."""
    names = [name for name in tasks.split(",") if name]
    if not names or RANDOM_INIT in names:
        return ",".join(names)
    return ",".join([RANDOM_INIT, *names])


def _task_node(name: str, config_dirs: list[Path]) -> Any:
    """The task config ``task/<name>.yaml`` as Hydra finds it (the user's folders first), or None."""
    from omegaconf import OmegaConf

    for folder in [*config_dirs, config_dir()]:
        path = folder / "task" / f"{name}.yaml"
        if path.is_file():
            return OmegaConf.load(path)
    return None


def floor_channels(tasks: str, config_dirs: list[Path]) -> list[int]:
    """The ``task.in_channels`` of the extra random-init rows ``tasks`` need: one per input kind, other
    than the random init's default, that a listed task's backbone reads and a random init can be fed."""
    from hydra.utils import get_class
    from omegaconf import DictConfig, OmegaConf

    from pretextlab.task_info import DEFAULT_INPUT_KIND, INPUT_KIND_CHANNELS

    names = [name for name in tasks.split(",") if name]
    if RANDOM_INIT not in names:
        return []
    random_init: Any = get_class(str(_task_node(RANDOM_INIT, config_dirs)["_target_"]))
    channels: list[int] = []
    for name in names:
        node = _task_node(name, config_dirs)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if name == RANDOM_INIT or target is None:
            continue  # an unknown task: its own job names the problem
        try:
            task_class: Any = get_class(str(target))
            kind = task_class.input_kind_of(OmegaConf.to_container(node))
        except Exception:
            continue  # likewise
        count = INPUT_KIND_CHANNELS.get(kind)
        if (kind != DEFAULT_INPUT_KIND and count is not None and count not in channels
                and random_init.input_kind_of({"in_channels": count}) == kind):
            channels.append(count)
    return channels


def sweep_key(tasks: str, vit_tasks: str, vit_backbone: str, vit_args: str, overrides: list[str],
              config_dirs: list[Path]) -> str:
    """Ten hex digits naming the sweep's command (what multirun.sh has always hashed, plus any config folders)."""
    parts = [tasks, vit_tasks, vit_backbone, vit_args, *overrides]
    parts += [f"--config-dir={folder.resolve()}" for folder in config_dirs]
    return hashlib.sha256("".join(f"{part}\n" for part in parts).encode()).hexdigest()[:10]


def _say(text: str) -> None:
    print(f"{LOG_PREFIX} {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="pretextlab sweep", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--tasks", default=env.get("TASKS"),
                        help="tasks on the configured backbone, comma-separated ('' for none; default: the "
                             "packaged tasks that declare in_default_sweep)")
    parser.add_argument("--vit-tasks", default=env.get("VIT_TASKS"),
                        help="tasks on the transformer backbone ('' for none; default: as --tasks, those "
                             "that require a transformer)")
    parser.add_argument("--vit-backbone", default=env.get("VIT_BACKBONE") or DEFAULT_VIT_BACKBONE)
    parser.add_argument("--vit-args", default=env.get("VIT_ARGS", DEFAULT_VIT_ARGS),
                        help="overrides for the transformer jobs only, before yours")
    parser.add_argument("--config-dir", "-cd", dest="config_dirs", type=Path, action="append", default=[],
                        help="a config folder of yours joining the packaged configs (repeatable)")
    parser.add_argument("--sweep-dir", type=Path, default=Path(env["SWEEP_DIR"]) if env.get("SWEEP_DIR") else None,
                        help="where the jobs and the table go (default: ./outputs/sweeps/sweep-<key of the command>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job")
    args = parser.parse_args(argv)
    for folder in args.config_dirs:
        if not folder.is_dir():
            print(f"pretextlab: error: --config-dir {folder} is not a folder", file=sys.stderr)
            return 2

    if args.tasks is None or args.vit_tasks is None:
        conv_default, vit_default = default_tasks()
        args.tasks = ",".join(conv_default) if args.tasks is None else args.tasks
        args.vit_tasks = ",".join(vit_default) if args.vit_tasks is None else args.vit_tasks
    tasks = with_floor(args.tasks)
    vit_tasks = with_floor(args.vit_tasks)
    key = sweep_key(tasks, vit_tasks, args.vit_backbone, args.vit_args, args.overrides, args.config_dirs)
    sweep_dir = (args.sweep_dir or Path("outputs") / "sweeps" / f"sweep-{key}").resolve()
    child_env = dict(env)
    child_env.setdefault("PRETEXTLAB_SWEEP_ID", sweep_dir.name)
    searchpath = searchpath_override(args.config_dirs)
    train = [sys.executable, "-m", "pretextlab.train", "-m"]
    _say(f"sweep directory: {sweep_dir}")
    started = time.time()

    status = 0
    if tasks:
        command = [*train, f"task={tasks}", f"hydra.sweep.dir={quoted_value(str(sweep_dir))}", *searchpath, *args.overrides]
        status = subprocess.call(command, env=child_env) or status
    for channels in floor_channels(tasks, args.config_dirs):
        command = [*train, f"task={RANDOM_INIT}", f"task.in_channels={channels}",
                   f"hydra.sweep.dir={quoted_value(str(sweep_dir))}",
                   "hydra.sweep.subdir=${hydra.job.num}_${task.name}_${task.in_channels}ch",
                   *searchpath, *args.overrides]
        status = subprocess.call(command, env=child_env) or status
    if vit_tasks:
        # The user's backbone choice applies to the convolutional tasks only.
        own = [arg for arg in args.overrides if not arg.lstrip("+~").startswith(("backbone=", "backbone."))]
        command = [*train, f"task={vit_tasks}", f"backbone={args.vit_backbone}",
                   f"hydra.sweep.dir={quoted_value(str(sweep_dir))}",
                   "hydra.sweep.subdir=${hydra.job.num}_${task.name}_${backbone.name}",
                   *searchpath, *shlex.split(args.vit_args), *own]
        status = subprocess.call(command, env=child_env) or status
    if status != 0:
        _say(f"some jobs were not run or the sweep failed (exit {status}): {sweep_dir}/table.md was not rebuilt")
        return status

    from pretextlab.table import main as table_main

    table_status = table_main([str(sweep_dir)])
    if table_status:
        return table_status
    _say(f"done in {int(time.time() - started)} s; table: {sweep_dir}/table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
