"""Linear probe on frozen features, with its hyper-parameters chosen on a validation split of train."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pretextlab.evaluation.extract import FeatureSet

log = logging.getLogger(__name__)


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def train_linear_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int = 512,
    seed: int = 0,
) -> nn.Linear:
    """Softmax regression with Adam and cosine decay on (already standardised) features."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(train_x.shape[1], num_classes)
    with torch.no_grad():
        model.weight.normal_(0, 0.01, generator=generator)
        model.bias.zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, (len(train_x) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(train_x), batch_size):
            index = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(train_x[index]), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model


@dataclass
class ProbeResult:
    top1: float
    top5: float
    lr: float
    weight_decay: float
    val_top1: float


class LinearProbe:
    """The ``linear`` protocol: one linear classifier per backbone stage on frozen features.

    For every stage, each (lr, weight decay) pair of the small sweep is trained on train minus a
    held-out ``val_fraction`` and scored there; the best pair is retrained on all of train and
    scored once on test. Test never influences a choice. Features are standardised with train
    statistics (a parameter-free BatchNorm, as in MAE's probe), which makes one lr grid fit all
    stages and backbones.
    """

    name = "linear"

    def __init__(
        self,
        epochs: int = 30,
        lrs: tuple[float, ...] = (1e-3, 1e-2),
        weight_decays: tuple[float, ...] = (0.0, 1e-4),
        val_fraction: float = 0.1,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"eval linear val_fraction must lie in (0, 1), got {val_fraction}")
        if epochs < 1:
            raise ValueError(f"eval linear epochs must be >= 1, got {epochs}")
        self.epochs = epochs
        self.lrs = tuple(lrs)
        self.weight_decays = tuple(weight_decays)
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed

    def fit_stage(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                  test_y: torch.Tensor, num_classes: int) -> ProbeResult:
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x = (train_x - mean) / std
        test_x = (test_x - mean) / std
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(train_x), generator=generator)
        num_val = max(1, int(round(len(train_x) * self.val_fraction)))
        val_index, fit_index = order[:num_val], order[num_val:]
        best: tuple[float, float, float] | None = None
        for lr in self.lrs:
            for wd in self.weight_decays:
                model = train_linear_classifier(train_x[fit_index], train_y[fit_index], num_classes, lr, wd,
                                                self.epochs, self.batch_size, self.seed)
                with torch.no_grad():
                    val_acc = _topk(model(train_x[val_index]), train_y[val_index], 1)
                if best is None or val_acc > best[0]:
                    best = (val_acc, lr, wd)
        assert best is not None
        val_acc, lr, wd = best
        model = train_linear_classifier(train_x, train_y, num_classes, lr, wd, self.epochs, self.batch_size, self.seed)
        with torch.no_grad():
            logits = model(test_x)
        return ProbeResult(_topk(logits, test_y, 1), _topk(logits, test_y, 5), lr, wd, val_acc)

    def run(self, train: FeatureSet, test: FeatureSet, num_classes: int) -> dict[str, Any]:
        start = time.perf_counter()
        labelled = train.labels >= 0
        per_stage: dict[str, dict[str, float]] = {}
        for stage, features in train.features.items():
            result = self.fit_stage(features[labelled], train.labels[labelled], test.features[stage],
                                    test.labels, num_classes)
            per_stage[stage] = {
                "top1": result.top1, "top5": result.top5, "val_top1": result.val_top1,
                "lr": result.lr, "weight_decay": result.weight_decay,
            }
            log.info("linear probe %s: top1 %.4f (val %.4f, lr %g, wd %g)", stage, result.top1,
                     result.val_top1, result.lr, result.weight_decay)
        stages = list(per_stage)
        # "Best stage" is chosen on the validation split, like every other probe choice.
        best_stage = max(stages, key=lambda s: per_stage[s]["val_top1"])
        last = stages[-1]
        return {
            "top1": per_stage[best_stage]["top1"],
            "top5": per_stage[best_stage]["top5"],
            "best_stage": best_stage,
            "last_stage": last,
            "last_top1": per_stage[last]["top1"],
            "last_top5": per_stage[last]["top5"],
            "per_stage": per_stage,
            "seconds": time.perf_counter() - start,
        }
