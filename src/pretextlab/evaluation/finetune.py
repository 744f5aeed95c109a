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
from pretextlab.evaluation.splits import select_shots
from pretextlab.tasks.base import EvaluationEncoder

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
    trained with SGD (momentum, cosine decay, weight decay) on the labelled train split (optionally
    ``shots_per_class`` images per class), with the datamodule's augmentation, then scored on test.
    The caller's encoder is never modified, so protocols that run later still see pretrained weights.
    A plain loop rather than a Lightning Trainer: it runs after pretraining, on one process.
    """

    name = "finetune"

    def __init__(
        self,
        epochs: int = 10,
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 128,
        augment: bool = True,
        shots_per_class: int | None = None,
        seed: int = 0,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"eval finetune epochs must be >= 1, got {epochs}")
        if lr <= 0 or weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError(f"eval finetune needs lr > 0, weight_decay >= 0, 0 <= momentum < 1; got "
                             f"{lr}, {weight_decay}, {momentum}")
        if batch_size < 1:
            raise ValueError(f"eval finetune batch_size must be >= 1, got {batch_size}")
        if shots_per_class is not None and shots_per_class < 1:
            raise ValueError(f"eval finetune shots_per_class must be >= 1 or null, got {shots_per_class}")
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.augment = augment
        self.shots_per_class = shots_per_class
        self.seed = seed

    def run_model(self, encoder: nn.Module, datamodule: Any, device: str | torch.device) -> dict[str, Any]:
        start = time.perf_counter()
        split = datamodule.split("train")
        labelled = torch.nonzero(split.labels >= 0, as_tuple=False).flatten()
        if len(labelled) == 0:
            raise ValueError("fine-tuning needs labelled training images, but every train label is -1")
        if self.shots_per_class is not None:
            labelled = labelled[select_shots(split.labels[labelled], self.shots_per_class, self.seed)]
        images, labels = split.images[labelled], split.labels[labelled]

        model = copy_encoder(encoder).to(device)
        head = nn.Linear(int(cast(Any, model).feature_dim), datamodule.num_classes).to(device)
        parameters = [p for p in list(model.parameters()) + list(head.parameters())]
        for param in parameters:
            param.requires_grad_(True)  # the copy may come from a frozen encoder
        optimizer = torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                    nesterov=self.momentum > 0)
        # Drop a ragged last batch: a batch of one would break BatchNorm's training statistics.
        batches_per_epoch = max(1, len(labels) // self.batch_size)
        batch_size = min(self.batch_size, len(labels))
        total_steps = self.epochs * batches_per_epoch
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
            for _ in range(self.epochs):
                order = torch.randperm(len(labels), generator=generator)
                for batch in range(batches_per_epoch):
                    index = order[batch * batch_size : (batch + 1) * batch_size]
                    inputs = datamodule.prepare_images(images[index].to(device), augment=self.augment)
                    targets = labels[index].to(device)
                    loss = nn.functional.cross_entropy(head(model(inputs)), targets)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"fine-tuning loss became {loss.item()}; lower eval.protocols.finetune.lr (now {self.lr})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    last_loss = loss.item()

        model.eval()
        head.eval()
        scores: list[torch.Tensor] = []
        test_labels: list[torch.Tensor] = []
        with torch.no_grad():
            for batch_images, batch_labels in datamodule.eval_dataloader("test"):
                inputs = datamodule.prepare_images(batch_images.to(device), augment=False)
                scores.append(head(model(inputs)).float().cpu())
                test_labels.append(batch_labels.cpu())
        logits, targets = torch.cat(scores), torch.cat(test_labels)
        top1, top5 = topk_accuracy(logits, targets, 1), topk_accuracy(logits, targets, 5)
        log.info("fine-tune (%d epochs, %d images): top1 %.4f", self.epochs, len(labels), top1)
        return {
            "top1": top1,
            "top5": top5,
            "epochs": self.epochs,
            "lr": self.lr,
            "final_train_loss": last_loss,
            "shots_per_class": self.shots_per_class,
            "train_images": len(labels),
            "test_images": len(targets),
            "seconds": time.perf_counter() - start,
        }
