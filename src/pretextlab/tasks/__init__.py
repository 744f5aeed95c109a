"""Pretext tasks: ``base`` holds what every task shares, one module per task holds the rest."""

from pretextlab.tasks.base import NonFiniteLossError, PretextOutput, PretextTask, TaskConfigError
from pretextlab.tasks.none import RandomInitTask
from pretextlab.tasks.rotation import RotationTask
from pretextlab.tasks.supervised import SupervisedTask

__all__ = [
    "NonFiniteLossError",
    "PretextOutput",
    "PretextTask",
    "RandomInitTask",
    "RotationTask",
    "SupervisedTask",
    "TaskConfigError",
]
