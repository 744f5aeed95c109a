"""Several pretext tasks at once on one shared backbone (the seed's combined pretext).

Each member is an ordinary task (rotation, jigsaw, context, ...) built around the shared backbone;
it contributes its own batch transform, head and loss through its ``pretext_step``. The combined
loss is ``sum_i weight_i * loss_i``; one optimiser trains the backbone and every member's head.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch

from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import PretextOutput, PretextTask, TaskConfigError
from pretextlab.tasks.config_checks import TaskConfigCheck


def _declared_in_channels(factory: Callable[..., PretextTask]) -> int | None:
    """The ``in_channels`` a member's config asks for, or the class default (None if unknown)."""
    keywords = getattr(factory, "keywords", {}) or {}
    if "in_channels" in keywords:
        return int(keywords["in_channels"])
    task_class = getattr(factory, "func", factory)
    for klass in getattr(task_class, "__mro__", ()):
        parameter = inspect.signature(klass.__init__).parameters.get("in_channels") if "__init__" in vars(klass) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return int(parameter.default)
    return None


def _describe(factory: Callable[..., PretextTask]) -> dict[str, Any]:
    """A plain-data description of a member factory (for the saved hyper-parameters)."""
    task_class = getattr(factory, "func", factory)
    keywords = {k: v for k, v in (getattr(factory, "keywords", {}) or {}).items()
                if isinstance(v, (int, float, str, bool, type(None)))}
    return {"class": f"{task_class.__module__}.{task_class.__qualname__}", **keywords}


class MultiTask(PretextTask):
    """One backbone shared by several member tasks, each with its own transform, head and weighted loss.

    ``members`` maps a member name to ``{"weight": w, "task": factory}``, where ``factory`` is a
    task class or a ``functools.partial`` of one (the yaml gives a ``_partial_: true`` node). Each
    factory is called with the shared backbone and this task's data statistics, with its own
    online probe and optimiser switched off: this task's probe and optimiser serve all members. A
    member with weight 0 (or a null entry) is left out.

    Members must take the same input form: the same ``in_channels`` (so colorization, which feeds
    the L channel only, cannot join RGB tasks) and a backbone they accept (jigsaw needs a convnet).
    Members that train optimisers of their own (:meth:`PretextTask.extra_optimizers`, e.g.
    inpainting's discriminator) are refused, with the member setting that removes them
    (``adversarial: false``); without them a member's training step is exactly its ``pretext_step``.

    Logged per member ``m``: its metrics as ``<m>_<metric>`` (e.g. ``rotation_acc``) and its
    unweighted loss as the loss term ``<m>`` (``pretext/train_loss_<m>``); every term is checked
    for NaN/Inf. Clean images enter the backbone the way the first member feeds them (the probe and
    evaluation use that), and the first member's ``clean_features`` / ``pretext_features`` are reused by the probe.
    """

    table_order = 70
    # Members log their metrics under their own names (rotation_acc, ...): the table shows the summed loss.
    pretext_metric = PretextMetric("val_loss", "loss", False)

    @classmethod
    def config_problems(cls, check: TaskConfigCheck) -> list[str]:
        """Each member's own checks (members with a weight <= 0 are left out, as the task leaves them out)."""
        from hydra.utils import get_class

        problems: list[str] = []
        for member, spec in (check.node.get("members") or {}).items():
            if not isinstance(spec, Mapping) or not isinstance(spec.get("task"), Mapping):
                continue  # the task itself reports a malformed member
            weight = spec.get("weight", 1.0)
            if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight <= 0:
                continue
            try:
                member_class = get_class(str(spec["task"].get("_target_")))
            except Exception:  # an unknown member class is reported when it is built
                continue
            if isinstance(member_class, type) and issubclass(member_class, PretextTask):
                problems += member_class.config_problems(check.for_member(str(member), spec["task"], member_class))
        return problems

    def __init__(self, members: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(members, Mapping) or not members:
            raise TaskConfigError(
                "task.members must map member names to {weight, task}; e.g. "
                "members: {rotation: {weight: 1.0, task: {_target_: pretextlab.tasks.rotation.RotationTask, "
                "_partial_: true}}}"
            )
        in_channels = int(self.hparams["in_channels"])
        self.members: dict[str, PretextTask] = torch.nn.ModuleDict()  # type: ignore[assignment]  # of tasks
        self.member_weights: dict[str, float] = {}
        described: dict[str, Any] = {}
        for name, spec in members.items():
            if spec is None:
                continue
            weight, factory = self._parse_member(str(name), spec)
            if weight == 0.0:
                continue
            member = self._build_member(str(name), factory, in_channels)
            self.members[str(name)] = member
            self.member_weights[str(name)] = weight
            described[str(name)] = {"weight": weight, "task": _describe(factory)}
        if not self.members:
            raise TaskConfigError(
                f"task.members leaves no member with a weight above 0 (given: {list(members)}); "
                "give at least one member a positive weight"
            )
        # The saved hyper-parameters hold plain data only, so checkpoints load with weights_only=True.
        self.hparams["members"] = described
        cast("dict[str, Any]", self._hparams_initial)["members"] = described  # an AttributeDict, untyped
        self.first_member_name = next(iter(self.members))

    @property
    def first_member(self) -> PretextTask:
        # A property, not an attribute: assigning a module would register it a second time.
        return self.members[self.first_member_name]

    @staticmethod
    def _parse_member(name: str, spec: Any) -> tuple[float, Callable[..., PretextTask]]:
        if not isinstance(spec, Mapping) or "task" not in spec:
            raise TaskConfigError(
                f"task.members.{name} must be {{weight: <float>, task: <task node with _partial_: true>}}, got {spec!r}"
            )
        try:
            weight = float(spec.get("weight", 1.0))
        except (TypeError, ValueError):
            weight = float("nan")
        if not weight >= 0.0 or weight == float("inf"):
            raise TaskConfigError(f"task.members.{name}.weight={spec.get('weight')!r} must be a finite number >= 0")
        factory = spec["task"]
        if isinstance(factory, PretextTask) or not callable(factory):
            raise TaskConfigError(
                f"task.members.{name}.task must be a task factory: give the node `_partial_: true` so that "
                "the multitask can build it around the shared backbone"
            )
        return weight, factory

    def _build_member(self, name: str, factory: Callable[..., PretextTask], in_channels: int) -> PretextTask:
        remove_hint = f"remove it with ~task.members.{name} (or task.members.{name}.weight=0)"
        declared = _declared_in_channels(factory)
        if declared is not None and declared != in_channels:
            raise TaskConfigError(
                f"multitask member {name!r} feeds {declared}-channel inputs but the shared backbone takes "
                f"{in_channels} (task.in_channels); all members must share one input form: {remove_hint}"
            )
        try:
            member = factory(
                backbone=self.backbone,
                name=name,
                optimizer=None,
                scheduler=None,
                num_classes=self.num_classes,
                mean=self.mean.tolist(),
                std=self.std.tolist(),
                image_size=self.image_size,
                in_channels=in_channels,
                online_probe=False,
            )
        except TaskConfigError as error:
            raise TaskConfigError(
                f"multitask member {name!r} cannot share this backbone: {error}; {remove_hint}"
            ) from error
        extras = member.extra_optimizers()
        if extras:
            owned = ", ".join(extra.name for extra in extras)
            switches = " and ".join(f"task.members.{name}.task.{extra.switched_off_by}" for extra in extras)
            raise TaskConfigError(
                f"multitask member {name!r} ({type(member).__name__}) trains an optimiser of its own ({owned}), "
                f"which a shared optimiser cannot drive; set {switches} or {remove_hint}"
            )
        # The backbone is registered once, on this module: the member keeps a plain reference, so
        # the state dict and the optimiser see every backbone weight exactly once.
        del member._modules["backbone"]
        object.__setattr__(member, "backbone", self.backbone)
        return member

    def setup(self, stage: str) -> None:
        # Members are nested LightningModules inside a ModuleDict, which Lightning does not walk:
        # give them the trainer so that member hooks reading it (e.g. data statistics) work.
        for member in self.members.values():
            member.trainer = self.trainer

    def on_fit_start(self) -> None:
        for member in self.members.values():
            member.on_fit_start()

    def backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        return self.first_member.backbone_input(images)

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        total = images.new_zeros(())
        metrics: dict[str, torch.Tensor] = {}
        terms: dict[str, torch.Tensor] = {}
        first_output: PretextOutput | None = None
        for name, member in self.members.items():
            output = member.pretext_step(images, labels)
            total = total + self.member_weights[name] * output.loss
            terms[name] = output.loss
            terms.update({f"{name}_{term}": value for term, value in output.terms.items()})
            metrics.update({f"{name}_{metric}": value for metric, value in output.metrics.items()})
            if member is self.first_member:
                first_output = output
        assert first_output is not None
        return PretextOutput(loss=total, metrics=metrics, terms=terms, clean_features=first_output.clean_features,
                             pretext_features=first_output.pretext_features)

    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        panels: dict[str, torch.Tensor] = {}
        for name, member in self.members.items():
            panels.update({f"{name}_{panel}": grid for panel, grid in member.visualize(images).items()})
        return panels
