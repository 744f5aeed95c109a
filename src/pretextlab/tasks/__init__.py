"""Pretext tasks: ``base`` holds what every task shares, one module per task holds the rest.

Task modules are imported lazily (``pretextlab.tasks.JigsawTask`` works, but importing this package
does not pull in timm-sized dependencies of tasks you do not use).
"""

from __future__ import annotations

import importlib
from typing import Any

from pretextlab.tasks.base import NonFiniteLossError, PretextOutput, PretextTask, TaskConfigError

_TASK_MODULES = {
    "RandomInitTask": "none",
    "RotationTask": "rotation",
    "SupervisedTask": "supervised",
    "JigsawTask": "jigsaw",
    "ColorizationTask": "colorization",
    "ContextTask": "context",
    "InpaintingTask": "inpainting",
    "MAETask": "mae",
    "MultiTask": "multitask",
}


def __getattr__(name: str) -> Any:
    if name in _TASK_MODULES:
        return getattr(importlib.import_module(f"pretextlab.tasks.{_TASK_MODULES[name]}"), name)
    raise AttributeError(f"module 'pretextlab.tasks' has no attribute {name!r}")


__all__ = ["NonFiniteLossError", "PretextOutput", "PretextTask", "TaskConfigError", *_TASK_MODULES]
