"""Fine-tuning: the whole pretrained encoder plus a linear head, trained on the labels."""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, cast

import torch
from torch import nn

from pretextlab.evaluation.linear import topk_accuracy
from pretextlab.evaluation.splits import labelled_split
from pretextlab.evaluation.encoder import EvaluationEncoder

log = logging.getLogger(__name__)


def copy_encoder(encoder: nn.Module) -> nn.Module:
    """An encoder with its own copy of the weights, the original left untouched.

    An :class:`EvaluationEncoder` keeps the task's input preparation as a bound method; a plain
    ``deepcopy`` would follow it and copy the whole task (and its trainer), so only its backbone is
    copied and the preparation (no trainable state) is shared. Other modules are deep-copied.
    """
    if isinstance(encoder, EvaluationEncoder):
        return encoder.with_backbone(copy.deepcopy(encoder.backbone))
    return copy.deepcopy(encoder)


class FineTune:
    """The ``finetune`` protocol: start from the pretrained weights and train everything on the labels.

    A deep copy of the encoder gets a fresh linear head on its pooled last-stage features; both are
    trained with SGD (nesterov momentum, cosine decay, weight decay) with the datamodule's
    augmentation, then scored on test. The learning rate is the best of ``lrs`` on a validation split
    carved from train: each candidate fine-tunes a fresh copy for ``search_epochs`` on the rest and
    is scored there; the chosen one then fine-tunes on all labelled train images (with one candidate
    there is no search). ``shots_per_class=k`` (semi-supervised): k labelled images per class drawn
    outside the validation split, which only scores the search. The caller's encoder is never
    modified. A plain loop rather than a Lightning Trainer: it runs after pretraining, on one process.
    """

    name = "finetune"

    def __init__(
        self,
        epochs: int = 10,
        lrs: list[float] | tuple[float, ...] = (0.02,),
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 128,
        augment: bool = True,
        shots_per_class: int | None = None,
        val_fraction: float = 0.1,
        search_epochs: int | None = None,
        seed: int = 0,
    ) -> None:
        if epochs < 1 or (search_epochs is not None and search_epochs < 1):
            raise ValueError(f"eval finetune epochs and search_epochs must be >= 1, got {epochs}, {search_epochs}")
        if not lrs or any(lr <= 0 for lr in lrs) or weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError(f"eval finetune needs lrs > 0 (at least one), weight_decay >= 0, 0 <= momentum < 1; got "
                             f"{list(lrs)}, {weight_decay}, {momentum}")
        if batch_size < 1:
            raise ValueError(f"eval finetune batch_size must be >= 1, got {batch_size}")
        if shots_per_class is not None and shots_per_class < 1:
            raise ValueError(f"eval finetune shots_per_class must be >= 1 or null, got {shots_per_class}")
        self.epochs = epochs
        self.lrs = [float(lr) for lr in lrs]
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.augment = augment
        self.shots_per_class = shots_per_class
        self.val_fraction = val_fraction
        self.search_epochs = search_epochs or epochs
        self.seed = seed

    def run_model(self, encoder: nn.Module, datamodule: Any, device: str | torch.device) -> dict[str, Any]:
        start = time.perf_counter()
        split = datamodule.split("train")
        fit, val = labelled_split(split.labels, self.val_fraction, self.shots_per_class, self.seed)
        search: list[dict[str, float]] = []
        lr = self.lrs[0]
        if len(self.lrs) > 1 and len(val) > 0:
            for candidate in self.lrs:
                model, head, _ = self._fine_tune(encoder, datamodule, split.images[fit], split.labels[fit], candidate,
                                                 self.search_epochs, device)
                logits = self._logits(model, head, datamodule, split.images[val], device)
                search.append({"lr": candidate, "val_top1": topk_accuracy(logits, split.labels[val], 1)})
            lr = max(search, key=lambda entry: entry["val_top1"])["lr"]  # first maximum: ties keep list order
        train_index = fit if self.shots_per_class is not None else torch.cat([fit, val]).sort().values
        images, labels = split.images[train_index], split.labels[train_index]
        model, head, last_loss = self._fine_tune(encoder, datamodule, images, labels, lr, self.epochs, device)
        test = datamodule.split("test")
        logits = self._logits(model, head, datamodule, test.images, device)
        top1, top5 = topk_accuracy(logits, test.labels, 1), topk_accuracy(logits, test.labels, 5)
        log.info("fine-tune (%d epochs, %d images, lr %g): top1 %.4f", self.epochs, len(labels), lr, top1)
        return {
            "top1": top1,
            "top5": top5,
            "epochs": self.epochs,
            "lr": lr,
            "lr_search": search,
            "val_top1": next((e["val_top1"] for e in search if e["lr"] == lr), None),
            "final_train_loss": last_loss,
            "shots_per_class": self.shots_per_class,
            "train_images": len(labels),
            "val_images": len(val),
            "test_images": len(test.labels),
            "seconds": time.perf_counter() - start,
        }

    def _fine_tune(self, encoder: nn.Module, datamodule: Any, images: torch.Tensor, labels: torch.Tensor, lr: float,
                   epochs: int, device: str | torch.device) -> tuple[nn.Module, nn.Module, float]:
        """A fresh copy of ``encoder`` + linear head, trained on ``images`` / ``labels``."""
        model = copy_encoder(encoder).to(device)
        head = nn.Linear(int(cast(Any, model).feature_dim), datamodule.num_classes).to(device)
        parameters = [p for p in list(model.parameters()) + list(head.parameters())]
        for param in parameters:
            param.requires_grad_(True)  # the copy may come from a frozen encoder
        optimizer = torch.optim.SGD(parameters, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                    nesterov=self.momentum > 0)
        # Drop a ragged last batch: a batch of one would break BatchNorm's training statistics.
        batches_per_epoch = max(1, len(labels) // self.batch_size)
        batch_size = min(self.batch_size, len(labels))
        total_steps = epochs * batches_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps)))
        generator = torch.Generator().manual_seed(self.seed)
        # Augmentation draws from torch's global RNG; fork it so fine-tuning neither depends on nor
        # disturbs the state the rest of the job left behind.
        devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
        model.train()
        head.train()
        last_loss = math.nan
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            for _ in range(epochs):
                order = torch.randperm(len(labels), generator=generator)
                for batch in range(batches_per_epoch):
                    index = order[batch * batch_size : (batch + 1) * batch_size]
                    inputs = datamodule.prepare_images(images[index].to(device), augment=self.augment)
                    loss = nn.functional.cross_entropy(head(model(inputs)), labels[index].to(device))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"fine-tuning loss became {loss.item()} at lr {lr}; lower eval.protocols.finetune.lrs")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    last_loss = loss.item()
        return model, head, last_loss

    @staticmethod
    def _logits(model: nn.Module, head: nn.Module, datamodule: Any, images: torch.Tensor,
                device: str | torch.device) -> torch.Tensor:
        model.eval()
        head.eval()
        scores = []
        with torch.no_grad():
            for begin in range(0, len(images), 500):
                inputs = datamodule.prepare_images(images[begin : begin + 500].to(device), augment=False)
                scores.append(head(model(inputs)).float().cpu())
        return torch.cat(scores)
