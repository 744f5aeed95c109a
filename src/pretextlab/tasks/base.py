"""What every pretext task shares: backbone, online probe, optimisation, logging, safety.

A task subclass provides only what is specific to it:

- :meth:`PretextTask.pretext_step` — its batched on-device transform, head(s) and loss;
- optionally :meth:`PretextTask.backbone_input` (how clean images enter the backbone),
  :meth:`PretextTask.visualize` (its image panel) and :meth:`PretextTask.content_free_images`
  (inputs without content, for the shortcut audit);
- optionally :meth:`PretextTask.extra_optimizers`: optimisers it trains beside the main one (a GAN's
  discriminator), each with the loss of its own step; the base class still runs the loop and
  applies the lr rule (``task.lr_scaling``) to every optimiser;
- the class attributes ``chance_accuracy`` / ``pretrains`` / ``requires``;
- what the rest of pretextlab reads about the task, each with a default that suits a task of a user's
  own: ``table_label`` / ``table_order`` / ``pretext_metric`` (the table), ``reference_imagenet_linear``
  / ``reference_rotnet_cifar`` (published figures), ``input_kind`` (export and evaluate),
  ``in_default_sweep`` (``pretextlab sweep``), :meth:`PretextTask.config_problems` (config validation).
  :meth:`PretextTask.task_info` gathers them into ``results.json`` (``task_info``), where the table,
  export and evaluate read them (:mod:`pretextlab.task_info`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import random

import lightning as L
import numpy as np
import torch
import torchmetrics
from torch import nn

from pretextlab.backbones.base import Backbone
from pretextlab.evaluation.encoder import EvaluationEncoder
from pretextlab.ops.augment import PADDING_MODES
from pretextlab.ops.inputs import prepare_input
from pretextlab.task_info import DEFAULT_INPUT_KIND, UNDECLARED_TABLE_ORDER, PretextMetric, input_kind_problem

if TYPE_CHECKING:
    from pretextlab.tasks.config_checks import TaskConfigCheck


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the message names the task, step and loss term."""


class TaskConfigError(ValueError):
    """A task was configured with values it cannot work with (the message names the fix)."""


@dataclass
class PretextOutput:
    """What a task's :meth:`~PretextTask.pretext_step` returns.

    ``loss`` is optimised; ``terms`` are its named parts (checked for NaN/Inf and logged);
    ``metrics`` are logged as ``pretext/<name>``; ``clean_features`` are the backbone features of
    the un-transformed images when the step computed them anyway (the online probe reuses them
    instead of running the backbone again). ``pretext_features`` are per-image ``(B, D)`` features
    the step pooled from what it did feed the backbone (the mean over an image's tiles, patches or
    visible tokens): the online probe's input under ``online_probe_features="pretext"`` when there
    are no clean features.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    clean_features: torch.Tensor | None = None
    pretext_features: torch.Tensor | None = None
    #: What the losses of the task's extra optimisers read from this pass (inpainting: its generator
    #: batch), so that their steps reuse it instead of running the pretext step again.
    extra_step_input: Any = None


@dataclass(frozen=True)
class ExtraOptimizer:
    """An optimiser a task trains beside the main one, stepped after it on every training batch.

    ``parameters`` stay out of the main optimiser's groups. ``build`` makes the optimiser from a
    list of parameter groups at its configured lr, the way ``task.optimizer`` (a ``_partial_``) is
    called; the base task then scales its lr by ``task.lr_scaling`` exactly like the main one's.
    ``scheduler``, when set, is built like ``task.scheduler`` (with ``total_steps``) and stepped after
    each step of this optimiser. ``loss`` is what the optimiser minimises, computed from the batch's
    :class:`PretextOutput` after the main step (``extra_step_input`` carries what it needs), with every
    other parameter frozen. ``switched_off_by`` is the task setting that removes this optimiser
    (``adversarial=false``): error messages name it as the fix.
    """

    name: str
    parameters: list[nn.Parameter]
    build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
    loss: Callable[[PretextOutput], torch.Tensor]
    switched_off_by: str
    scheduler: Callable[..., Any] | None = None


#: Where the online probe takes its features from (``task.online_probe_features``).
PROBE_FEATURE_SOURCES = ("pretext", "images")


class PretextTask(L.LightningModule):
    """Base LightningModule of every task (solo-learn style: shared machinery, small methods)."""

    #: Accuracy of guessing on the pretext problem (None for reconstruction tasks).
    chance_accuracy: float | None = None
    #: False for the random-init row: nothing is trained before evaluation.
    pretrains: bool = True
    #: "convnet" (any backbone with spatial maps), "transformer", or "any".
    requires: str = "any"

    # -- what the rest of pretextlab reads about the task (recorded by task_info()) ----------------
    #: The task's name in the table's rows; None: the config's ``task.name``.
    table_label: str | None = None
    #: Where the task's rows sit in the table, ascending. Built-ins: random init 0, inpainting 10,
    #: context 20, colorization 30, jigsaw 40, rotation 50, MAE 60, multitask 70, supervised 80; a task
    #: that does not say sits at 75, after the pretext tasks and before the supervised upper bound.
    table_order: float = UNDECLARED_TABLE_ORDER
    #: The pretext metric the table shows (see :meth:`pretext_metric_of` for one that depends on the
    #: config); None: the first the run logged of the table's general list (``val_acc``, ...).
    pretext_metric: PretextMetric | None = None
    #: Published ImageNet linear-probe top-1 (%) of the method, shown for orientation (never measured
    #: here); None: no published number in that setting. The built-ins' figures are those summarised
    #: in the seed (see /work/shared/REFERENCES.md): AlexNet/ResNet-50-era models on ImageNet.
    reference_imagenet_linear: float | None = None
    #: The published figure shown for rows in RotNet's CIFAR-10 setting (``nin`` on CIFAR-10), as text.
    reference_rotnet_cifar: str | None = None
    #: How the backbone takes its input (an export's ``input.kind``, evaluate's preparation):
    #: "rgb_normalized" (channel standardisation) or "lab_l" (the L of CIE Lab, colorization's).
    input_kind: str = DEFAULT_INPUT_KIND
    #: Whether ``pretextlab sweep`` runs the task when no task list is given (on the transformer
    #: backbone when ``requires == "transformer"``, else on the configured one).
    in_default_sweep: bool = False

    # Declared so that type checkers see these types rather than nn.Module's "Tensor | Module".
    backbone: Backbone
    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(
        self,
        backbone: Backbone,
        name: str = "task",
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        num_classes: int = 10,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        image_size: int = 32,
        in_channels: int = 3,
        probe_lr: float = 0.1,
        online_probe: bool = True,
        online_probe_features: str = "pretext",
        panel_images: int = 8,
        lr_scaling: str = "none",
        base_batch_size: int = 256,
        crop_padding_mode: str = "constant",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self._check_backbone(backbone, in_channels)
        #: The input kind of this instance (``input_kind_of`` its settings): what backbone_input prepares.
        self.backbone_input_kind = type(self).input_kind_of({"in_channels": in_channels})
        self.backbone = backbone
        self.task_name = name
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=False)
        self.online_probe = online_probe and num_classes > 0
        if online_probe_features not in PROBE_FEATURE_SOURCES:
            raise TaskConfigError(f"task.online_probe_features={online_probe_features!r}: choose one of "
                                  f"{list(PROBE_FEATURE_SOURCES)}")
        self.online_probe_features = online_probe_features
        self.probe_lr = probe_lr
        self.panel_images = panel_images
        if lr_scaling not in ("none", "linear", "sqrt"):
            raise TaskConfigError(f"task.lr_scaling={lr_scaling!r}: choose none, linear or sqrt")
        self.lr_scaling = lr_scaling
        self.base_batch_size = base_batch_size
        if crop_padding_mode not in PADDING_MODES:
            raise TaskConfigError(f"task.crop_padding_mode={crop_padding_mode!r}: choose one of {list(PADDING_MODES)}")
        #: How the DataModule's random crop pads this task's training images (read by the DataModule).
        self.crop_padding_mode = crop_padding_mode
        if self.online_probe:
            self.probe = nn.Linear(backbone.feature_dim, num_classes)
            self.probe_train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
            self.probe_val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")

    # -- what the task says about itself -------------------------------------------------------
    @classmethod
    def pretext_metric_of(cls, config: Mapping[str, Any]) -> PretextMetric | None:
        """The headline pretext metric of the task built from ``config`` (its task node); default
        :attr:`pretext_metric`. A task whose metric depends on its settings overrides this."""
        return cls.pretext_metric

    @classmethod
    def config_problems(cls, check: TaskConfigCheck) -> list[str]:
        """Problems of the task's settings that involve the image size or the backbone, one line each in
        config validation's wording (:func:`pretextlab.validation.problem`); default: none.

        Called by config validation before anything is built, with the task's config node, the prefix of
        its keys, the image size and the backbone on the ``meta`` device (:class:`TaskConfigCheck`).
        """
        return []

    @classmethod
    def input_kind_of(cls, config: Mapping[str, Any]) -> str:
        """The input kind of the task built from ``config`` (its task node); default :attr:`input_kind`.
        A task whose input depends on its settings overrides this (random init: on ``in_channels``)."""
        return cls.input_kind

    @classmethod
    def task_info(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """What the table, export and evaluate need to know about the task built from ``config`` (its
        task node), as plain JSON: written into ``results.json`` as ``task_info``."""
        metric = cls.pretext_metric_of(config)
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "label": cls.table_label or str(config.get("name") or cls.__name__),
            "order": float(cls.table_order),
            "pretext_metric": None if metric is None else metric._asdict(),
            "reference": {"imagenet_linear_top1": cls.reference_imagenet_linear,
                          "rotnet_cifar": cls.reference_rotnet_cifar},
            "input_kind": cls.input_kind_of(config),
        }

    # -- what subclasses override ---------------------------------------------------------------
    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        """Build the pretext batch from clean float images in [0, 1], run it, return the loss."""
        raise NotImplementedError

    def backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        """How clean [0, 1] images enter the backbone, here and in evaluation: by the task's input kind
        (channel normalisation; the L channel scaled to [-1, 1] (L / 50 - 1) for ``lab_l``)."""
        return prepare_input(images, self.backbone_input_kind, self.mean, self.std)

    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named image grids ``(3, H, W)`` in [0, 1] showing the task's inputs and outputs."""
        return {}

    def content_free_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images with their content removed, for the shortcut audit (:mod:`pretextlab.audit`).

        Default: every image becomes flat, filled with its own mean colour, so that whatever the
        task's transform adds (padding, borders, tile and patch positions) is all that is left.
        A task whose pretext input is not built from the image pixels alone overrides this.
        """
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).contiguous()

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        """Optimisers this task trains beside ``task.optimizer`` (default: none).

        With none, Lightning's automatic optimisation runs :meth:`training_step`'s loss; with some,
        :meth:`training_step` steps the main optimiser and then each of these in turn.
        """
        return []

    # -- shared machinery -----------------------------------------------------------------------
    @property
    def automatic_optimization(self) -> bool:
        """Decided by :meth:`extra_optimizers`: several optimisers are stepped by :meth:`training_step`."""
        return not self.extra_optimizers()

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        raise AttributeError(f"{type(self).__name__}.automatic_optimization follows extra_optimizers(); "
                             "declare the extra optimisers there instead of setting it")

    def _check_backbone(self, backbone: Backbone, in_channels: int) -> None:
        name = type(self).__name__
        problem = backbone_problem(self.requires, backbone)
        if problem is not None:
            raise TaskConfigError(f"{name} {problem}")
        kind_problem = input_kind_problem(type(self).input_kind_of({"in_channels": in_channels}), in_channels)
        if kind_problem is not None:
            raise TaskConfigError(f"{name} {kind_problem}")
        if backbone.in_channels != in_channels:
            raise TaskConfigError(
                f"{name} feeds {in_channels}-channel inputs but the backbone was built for "
                f"{backbone.in_channels}; set backbone.in_channels=${{task.in_channels}}"
            )

    def encoder(self) -> EvaluationEncoder:
        """The backbone as evaluation sees it: [0, 1] images in, features out."""
        return EvaluationEncoder(self.backbone, self.backbone_input)

    def _check_finite(self, output: PretextOutput) -> None:
        terms = {"loss": output.loss, **output.terms}
        for term, value in terms.items():
            if not torch.isfinite(value.detach()).all():
                raise NonFiniteLossError(
                    f"task {type(self).__name__}: loss term {term!r} is {value.detach().float().mean().item()} "
                    f"at global step {self.global_step} (epoch {self.current_epoch}); lower the learning rate, "
                    "use precision=32-true, or check the input data"
                )

    def probe_features(self, output: PretextOutput, images: torch.Tensor) -> torch.Tensor:
        """The online probe's input: features the step computed anyway, else a no-grad forward.

        Clean-image features (rotation's upright quarter, colourisation, supervised) are used as
        they are. Tasks that feed the backbone only tiles, patches or masked inputs give per-image
        features pooled over them; ``online_probe_features="pretext"`` (default) probes those, at
        no extra cost, while ``"images"`` runs the backbone once more, without gradients, on the
        whole clean images (what offline evaluation sees, for about half a tile step more at 32 px;
        see benchmarks/README.md).

        That extra pass runs the backbone in eval mode: in train mode it would fold whole-image
        statistics into the BatchNorm running averages, so the monitor would change the model it
        monitors (it did until 2026-12; on the CIFAR-10 CPU preset, seed 0, the offline linear top-1
        with and without that train-mode pass: context 51.0 / 50.5 %, jigsaw 49.0 / 49.1 %).
        Whichever source is chosen, or none, the pretrained backbone is now the same.
        """
        features = output.clean_features
        if features is None and self.online_probe_features == "pretext":
            features = output.pretext_features
        if features is None:
            was_training = self.backbone.training
            self.backbone.eval()
            try:
                with torch.no_grad():
                    features = self.backbone(self.backbone_input(images))
            finally:
                self.backbone.train(was_training)
        return features

    def _probe_loss(self, output: PretextOutput, images: torch.Tensor, labels: torch.Tensor,
                    stage: str) -> torch.Tensor:
        if not self.online_probe:
            return images.new_zeros(())
        features = self.probe_features(output, images)
        logits = self.probe(features.detach().float())
        labelled = labels >= 0  # unlabeled images (-1) do not train or score the probe
        if not labelled.any():
            return logits.sum() * 0.0
        loss = nn.functional.cross_entropy(logits[labelled], labels[labelled])
        metric = self.probe_train_acc if stage == "train" else self.probe_val_acc
        metric.update(logits[labelled].detach(), labels[labelled])  # logged per epoch: no per-step value needed
        self.log(f"probe/{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 sync_dist=stage == "val")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.automatic_optimization:
            output, probe_loss = self._training_losses(images, labels)
            return output.loss + probe_loss
        return self._step_every_optimizer(images, labels)

    def _training_losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[PretextOutput, torch.Tensor]:
        """The pretext step's output (checked and logged) and the online probe's loss."""
        output = self.pretext_step(images, labels)
        self._check_finite(output)
        self._log_pretext(output, "train", len(images))
        return output, self._probe_loss(output, images, labels, "train")

    def _step_every_optimizer(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Manual optimisation: the main optimiser on pretext + probe loss, then each extra optimiser.

        Each step freezes the parameters of the other optimisers (``toggle_optimizer``), so the
        main pass leaves no gradients on, e.g., the discriminator, and an extra step none on the
        backbone. Schedulers are stepped right after their own optimiser.
        """
        optimizers = self.optimizers()
        main, *others = optimizers if isinstance(optimizers, list) else [optimizers]
        self.toggle_optimizer(main)
        output, probe_loss = self._training_losses(images, labels)
        main.zero_grad()
        self.manual_backward(output.loss + probe_loss)
        main.step()
        self.untoggle_optimizer(main)
        self._step_schedulers_of(main)
        for extra, optimizer in zip(self.extra_optimizers(), others, strict=True):
            self.toggle_optimizer(optimizer)
            loss = extra.loss(output)
            self._check_finite(PretextOutput(loss=output.loss.detach(), terms={extra.name: loss}))
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            self.untoggle_optimizer(optimizer)
            self._step_schedulers_of(optimizer)
            self.log(f"pretext/train_loss_{extra.name}", loss.detach(), on_step=True, on_epoch=True,
                     batch_size=len(images))
        return output.loss.detach()

    def _step_schedulers_of(self, optimizer: Any) -> None:
        wrapped = getattr(optimizer, "optimizer", optimizer)  # Lightning hands out LightningOptimizer wrappers
        for config in self.trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is wrapped:
                config.scheduler.step()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        output = self.pretext_step(images, labels)
        self._log_pretext(output, "val", len(images))
        self._probe_loss(output, images, labels, "val")
        if batch_idx == 0 and self.panel_images > 0:
            from pretextlab.viz import log_panels

            with torch.no_grad():
                panels = self.visualize(images[: self.panel_images])
            log_panels(self, panels)

    def _log_pretext(self, output: PretextOutput, stage: str, batch_size: int) -> None:
        values = {f"pretext/{stage}_loss": output.loss.detach()}
        values.update({f"pretext/{stage}_{k}": v.detach() for k, v in output.metrics.items()})
        values.update({f"pretext/{stage}_loss_{k}": v.detach() for k, v in output.terms.items()})
        self.log_dict(values, on_step=stage == "train", on_epoch=True, batch_size=batch_size,
                      prog_bar=False, sync_dist=stage == "val")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The main optimiser's groups: task parameters (backbone + heads) in one, the probe in its own
        (no weight decay). The parameters of :meth:`extra_optimizers` belong to those alone."""
        probe_params = set(self.probe.parameters()) if self.online_probe else set()
        held_apart = probe_params | {p for extra in self.extra_optimizers() for p in extra.parameters}
        task_params = [p for p in self.parameters() if p.requires_grad and p not in held_apart]
        groups: list[dict[str, Any]] = [{"params": task_params, "name": "task"}]
        if self.online_probe:
            groups.append({"params": list(probe_params), "lr": self.probe_lr, "weight_decay": 0.0, "name": "probe"})
        return groups

    def on_train_epoch_end(self) -> None:
        # Progress travels back through callback_metrics, which (unlike trainer.global_step) survives
        # the return from ddp_spawn worker processes to the main process.
        # Steps = training batches (global_step counts every optimizer's steps under manual
        # optimisation, e.g. twice per batch for a GAN).
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        self.log_dict({"progress/steps": float(batches), "progress/epochs": float(self.current_epoch + 1)},
                      on_step=False, on_epoch=True, rank_zero_only=True)

    # -- exact resume ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Random pretext transforms and augmentations draw from the global generators; storing them
        # makes a resumed run continue the very same random stream as an uninterrupted one.
        checkpoint["pretextlab_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # Plain types and tensors only, so the checkpoint loads with weights_only=True.
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }
        # The last epoch's metrics, so that a job resumed after its final epoch (it died during
        # evaluation) still reports them.
        checkpoint["pretextlab_metrics"] = {
            key: float(value) for key, value in self.trainer.callback_metrics.items()
            if key.startswith(("pretext/", "probe/", "progress/"))}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("pretextlab_rng")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        random.setstate(states["python"])

    def lr_scale_factor(self) -> float:
        """Factor applied to every configured lr: 1, or global batch / base batch (linear), or its sqrt.

        The global batch is the per-process ``data.batch_size`` times the number of processes.
        """
        if self.lr_scaling == "none" or self._trainer is None:
            return 1.0
        datamodule = getattr(self.trainer, "datamodule", None)
        per_process = int(getattr(datamodule, "batch_size", self.base_batch_size))
        ratio = per_process * self.trainer.world_size / self.base_batch_size
        return ratio if self.lr_scaling == "linear" else ratio**0.5

    def scale_learning_rates(self, optimizer: torch.optim.Optimizer) -> None:
        factor = self.lr_scale_factor()
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor

    def _build_optimizer(self, factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
                         groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """Every optimiser of a task is made here, so the lr rule applies to each (before any scheduler)."""
        optimizer = factory(groups)
        self.scale_learning_rates(optimizer)
        return optimizer

    def _scheduler_config(self, factory: Callable[..., Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        scheduler = factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"scheduler": scheduler, "interval": "step"}

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise TaskConfigError(f"{type(self).__name__} has no optimizer; set task.optimizer")
        optimizer = self._build_optimizer(self.optimizer_factory, self.parameter_groups())
        schedulers = [] if self.scheduler_factory is None else [self._scheduler_config(self.scheduler_factory, optimizer)]
        extras = self.extra_optimizers()
        if not extras:
            return optimizer if not schedulers else {"optimizer": optimizer, "lr_scheduler": schedulers[0]}
        optimizers = [optimizer]
        for extra in extras:
            extra_optimizer = self._build_optimizer(extra.build, [{"params": extra.parameters, "name": extra.name}])
            optimizers.append(extra_optimizer)
            if extra.scheduler is not None:
                schedulers.append(self._scheduler_config(extra.scheduler, extra_optimizer))
        return (optimizers, schedulers) if schedulers else optimizers


def _numpy_state_to_plain(state: Any) -> tuple[Any, ...]:
    kind, keys, position, has_gauss, cached = state
    return (str(kind), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))


def backbone_problem(requires: str, backbone: Backbone) -> str | None:
    """Why ``backbone`` cannot serve a task whose ``requires`` is given, or None when it can.

    The one check of a task's ``requires`` (the task's constructor and config validation both ask
    it): a phrase to follow the task's name, ending with the fix.
    """
    if requires == "convnet" and not backbone.is_convolutional:
        return (f"needs a convolutional backbone (spatial feature maps), got {type(backbone).__name__}; "
                "choose backbone=convnet, resnet18 or resnet50")
    if requires == "transformer" and backbone.is_convolutional:
        return (f"needs a transformer backbone (patch tokens), got {type(backbone).__name__}; "
                "choose backbone=vit_tiny (or another vit_*)")
    return None


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of ``logits`` against integer ``targets`` (a float scalar tensor)."""
    return (logits.argmax(dim=-1) == targets).float().mean()


def smallest_input_size(backbone: Backbone, min_map: int, start: int, limit: int) -> int:
    """The smallest square input side ``>= start`` at which every spatial stage map is ``>= min_map`` px.

    Found by trying sizes on a one-image dummy batch (eval mode, no gradients, so BatchNorm
    statistics are untouched); ``limit`` ends the search with a ``TaskConfigError``.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        with torch.no_grad():  # below the backbone's own minimum its pools fail: start there
            for size in range(max(1, start, backbone.min_input_size or 1), limit + 1):
                maps = backbone.stage_outputs(torch.zeros(1, backbone.in_channels, size, size, device=device))
                if all(m.ndim != 4 or min(m.shape[-2:]) >= min_map for m in maps):
                    return size
    finally:
        backbone.train(was_training)
    raise TaskConfigError(f"no input of {start}..{limit} px gives every stage of {type(backbone).__name__} a map "
                          f"of at least {min_map}x{min_map}; lower min_stage_map or set the input size explicitly")


def mlp_head(in_features: int, out_features: int, hidden: int = 0) -> nn.Module:
    """Linear head, or a one-hidden-layer MLP with BN when ``hidden > 0``."""
    if hidden <= 0:
        return nn.Linear(in_features, out_features)
    return nn.Sequential(
        nn.Linear(in_features, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_features),
    )
