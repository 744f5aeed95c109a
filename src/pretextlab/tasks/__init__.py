"""Pretext tasks: ``base`` holds what every task shares, one module per task holds the rest.

Configs name a task class by its module (``pretextlab.tasks.rotation.RotationTask``). The package
itself exports the base API; ``pretextlab.tasks.RotationTask`` still works (older configs and
records name classes that way): the task modules are searched for the name, lazily, so importing
this package does not pull in the dependencies of tasks you do not use, and no list of tasks is kept.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import NonFiniteLossError, PretextOutput, PretextTask, TaskConfigError


def __getattr__(name: str) -> Any:
    if name[:1].isupper():
        for module in pkgutil.iter_modules(__path__):
            found = getattr(importlib.import_module(f"{__name__}.{module.name}"), name, None)
            if isinstance(found, type) and issubclass(found, PretextTask):
                return found
    raise AttributeError(f"module 'pretextlab.tasks' has no attribute {name!r}")


__all__ = ["NonFiniteLossError", "PretextMetric", "PretextOutput", "PretextTask", "TaskConfigError"]
