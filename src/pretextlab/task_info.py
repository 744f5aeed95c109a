"""What a task says about itself to the rest of pretextlab, as ``results.json`` records it (``task_info``).

A task class declares its table label and order, its headline pretext metric, its published reference
figures and the input kind its backbone expects (:class:`pretextlab.tasks.base.PretextTask`);
``train.py`` writes :meth:`~pretextlab.tasks.base.PretextTask.task_info` into every record, and the
table, export and evaluate read it back with :func:`recorded_task_info`. Records written before
``task_info`` existed are described by the class their config names, else by the packaged task
config of their task name, else not at all (the readers' neutral defaults).

Kept free of torch and Lightning: the table and loading an export import it; a task class is only
imported for an old record that needs one.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

#: How a backbone takes its input unless its task says otherwise: RGB standardised with the
#: pretraining data's channel statistics.
DEFAULT_INPUT_KIND = "rgb_normalized"
#: The L of CIE Lab scaled to [-1, 1]: colorization's input, and that of its random-init floor.
LAB_L_INPUT_KIND = "lab_l"
#: The input kinds pretextlab can prepare (:func:`pretextlab.ops.inputs.prepare_input`), with the
#: channels each gives the backbone.
INPUT_KIND_CHANNELS = {DEFAULT_INPUT_KIND: 3, LAB_L_INPUT_KIND: 1}
#: Table order of a task that declares none: after the built-in pretext tasks, before supervised.
UNDECLARED_TABLE_ORDER = 75.0


class PretextMetric(NamedTuple):
    """A task's headline pretext metric: its key in ``results["pretext"]`` (``val_acc``), the label
    the table prints with it, and whether it is an accuracy (shown in %)."""

    key: str
    label: str
    is_accuracy: bool


@functools.lru_cache(maxsize=None)
def _task_class(target: str) -> Any:
    """The task class ``target`` names (``pretextlab.tasks.rotation.RotationTask``), or None when it
    cannot be imported here (an old record's class that is gone, a user's module not on this path) or
    is not a task. Quietly: a record that names such a class still gets a row (hydra's get_class logs)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except Exception:
            continue
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except Exception:
            return None
        return found if isinstance(found, type) and callable(getattr(found, "task_info", None)) else None
    return None


@functools.lru_cache(maxsize=None)
def _packaged_target(task_name: str) -> str | None:
    """The ``_target_`` of the packaged task config ``conf/task/<task_name>.yaml``, if there is one."""
    from omegaconf import OmegaConf

    from pretextlab.paths import config_dir

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", task_name):
        return None
    path = config_dir() / "task" / f"{task_name}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    target = node.get("_target_") if isinstance(node, Mapping) else None
    return str(target) if target else None


def recorded_task_info(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's ``task_info``; for a record written before it, the one its task class gives for the
    record's task config; ``{}`` when neither the record nor a class says (callers use their defaults)."""
    info = record.get("task_info")
    if isinstance(info, dict):
        return info
    config = record.get("config")
    task_config = config.get("task") if isinstance(config, dict) else None
    task_config = dict(task_config) if isinstance(task_config, dict) else {}
    name = record.get("task")
    task_class = _task_class(str(task_config["_target_"])) if task_config.get("_target_") else None
    if task_class is None and isinstance(name, str):
        target = _packaged_target(name)
        task_class = _task_class(target) if target else None
    if task_class is None:
        return {}
    described = task_class.task_info({"name": name, **task_config})
    return described if isinstance(described, dict) else {}


def input_kind_problem(kind: str, in_channels: Any) -> str | None:
    """Why a task of input kind ``kind`` cannot be fed ``in_channels`` channels (None: it can, or the
    kind is a user's own, which pretextlab does not know)."""
    channels = INPUT_KIND_CHANNELS.get(kind)
    if channels is None or in_channels == channels:
        return None
    what = "the L channel of CIE Lab" if kind == LAB_L_INPUT_KIND else "RGB images"
    return f"feeds {what} ({kind}), so task.in_channels must be {channels}, got {in_channels}"


def input_kind_of(record: Mapping[str, Any]) -> str:
    """How the backbone of the run that wrote ``record`` expects its input."""
    kind = recorded_task_info(record).get("input_kind")
    return kind if isinstance(kind, str) and kind else DEFAULT_INPUT_KIND
