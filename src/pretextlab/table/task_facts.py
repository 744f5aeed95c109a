"""What the table reads about a row's task: label, place, pretext metric and published references.

Each task class declares these (:class:`pretextlab.tasks.base.PretextTask`) and ``results.json``
records them as ``task_info``; for records written before that, :func:`pretextlab.task_info.recorded_task_info`
asks the task class, and a task nobody describes gets neutral facts: its own name, a place after the
pretext tasks and before supervised, the first pretext metric of :data:`GENERAL_PRETEXT_METRICS` it logged (also the fallback of a
task whose own metric a run did not log).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pretextlab.task_info import UNDECLARED_TABLE_ORDER, PretextMetric, recorded_task_info

#: Pretext metrics, in order of preference, for a task that does not name its own.
GENERAL_PRETEXT_METRICS = (
    PretextMetric("val_acc", "acc", True),
    PretextMetric("val_masked_mse", "masked MSE", False),
    PretextMetric("val_mse", "MSE", False),
    PretextMetric("val_ab_mse", "ab MSE", False),
    PretextMetric("val_loss_reconstruction", "recon. loss", False),
    PretextMetric("val_loss", "loss", False),
)


def _metric(value: Any) -> PretextMetric | None:
    if isinstance(value, dict) and isinstance(value.get("key"), str):
        return PretextMetric(value["key"], str(value.get("label") or value["key"]), bool(value.get("is_accuracy")))
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class TaskFacts:
    """A row's task as the table shows it."""

    label: str
    order: float
    #: None: the task names none, or the record does not say (the general list applies).
    pretext_metric: PretextMetric | None
    reference_imagenet_linear: float | None
    reference_rotnet_cifar: str | None

    @classmethod
    def of(cls, record: dict[str, Any]) -> TaskFacts:
        info = recorded_task_info(record)
        task = record.get("task")
        reference = info["reference"] if isinstance(info.get("reference"), dict) else {}
        order = _number(info.get("order"))
        rotnet = reference.get("rotnet_cifar")
        return cls(label=str(info.get("label") or ("unknown" if task is None else task)),
                   order=UNDECLARED_TABLE_ORDER if order is None else order,
                   pretext_metric=_metric(info.get("pretext_metric")),
                   reference_imagenet_linear=_number(reference.get("imagenet_linear_top1")),
                   reference_rotnet_cifar=rotnet if isinstance(rotnet, str) else None)

    def pretext_value(self, pretext: dict[str, Any]) -> tuple[str, float, bool] | None:
        """``(label, value, is accuracy)`` of the headline pretext metric in a record's ``pretext`` values:
        the task's own, else (a run that did not log it, a task that names none) the general list's first."""
        own = [self.pretext_metric] if self.pretext_metric is not None else []
        for key, label, is_accuracy in [*own, *GENERAL_PRETEXT_METRICS]:
            value = pretext.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return label, float(value), is_accuracy
        return None
