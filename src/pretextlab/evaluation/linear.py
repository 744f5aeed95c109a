"""Linear probe on frozen features, with its hyper-parameters chosen on a validation split of train."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch

from pretextlab.evaluation.extract import FeatureSet
from pretextlab.evaluation.splits import labelled_split

log = logging.getLogger(__name__)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (k is capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


#: Below this many multiply-adds per training step the probe runs single-threaded on the CPU.
SINGLE_THREAD_WORK = 5e7


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Temporarily run torch's CPU ops on ``count`` threads (None: leave the setting alone).

    The probe's per-step matmuls are tiny; with several intra-op threads their synchronisation
    costs more than the work: on this project's shared 2-core machine (load average ~10), a 5-epoch
    probe of 10k × (16, 32, 64, 128)-dim features took 25.6 s with 2 threads and 3.9 s with 1.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_linear_models(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    lrs: torch.Tensor,
    weight_decays: torch.Tensor,
    epochs: int,
    batch_size: int = 1024,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``G`` softmax regressions on the same features at once, one per ``(lr, weight decay)``.

    ``train_x`` is ``(N, D)``; ``lrs`` and ``weight_decays`` are ``(G,)``. All candidates live in one
    wide ``(D, G·C)`` layer, so a step is one matmul for the logits of every candidate and one for
    all their gradients: the pass over the features is shared, and the cost of a candidate is its
    share of two wide matmuls rather than a pass of its own. Every candidate sees the same seeded
    minibatches and its update depends only on its own weights, so it ends exactly where it would
    have ended if trained alone. The gradient of the mean cross-entropy plus the L2 penalty
    ``wd/2 · ||W||²`` (weights, not bias) is written out (no autograd graph); the optimiser is Adam
    with cosine decay, each candidate at its own learning rate. Weights start at zero, so the result
    depends only on the data order. Returns ``(weights (G, D, C), biases (G, C))``.
    """
    if train_x.ndim != 2:
        raise ValueError(f"train_x must be (samples, dim), got shape {tuple(train_x.shape)}")
    if lrs.shape != weight_decays.shape or lrs.ndim != 1:
        raise ValueError(f"lrs and weight_decays must be two (G,) tensors, got {tuple(lrs.shape)}, "
                         f"{tuple(weight_decays.shape)}")
    num_samples, dim = train_x.shape
    models = len(lrs)
    device = train_x.device
    weights = torch.zeros(dim, models, num_classes, device=device)
    biases = torch.zeros(models, num_classes, device=device)
    lrs, weight_decays = lrs.to(device, torch.float32), weight_decays.to(device, torch.float32)
    step_work = models * min(batch_size, num_samples) * dim * num_classes
    threads = 1 if device.type == "cpu" and step_work < SINGLE_THREAD_WORK else None
    with cpu_threads(threads), torch.no_grad():
        _adam_loop(train_x, train_y, weights, biases, lrs, weight_decays, epochs, batch_size, seed)
    return weights.permute(1, 0, 2).contiguous(), biases


def _softmax_gradients(inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor,
                       weight_decays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of every candidate's mean cross-entropy + L2 penalty, for ``weights (D, G, C)``."""
    dim, models, num_classes = weights.shape
    batch = len(targets)
    logits = torch.addmm(biases.view(1, -1), inputs, weights.view(dim, -1)).view(batch, models, num_classes)
    probabilities = logits.softmax(dim=2)
    probabilities[torch.arange(batch, device=inputs.device), :, targets] -= 1.0
    probabilities /= batch
    grad_weights = (inputs.T @ probabilities.view(batch, -1)).view(dim, models, num_classes)
    grad_weights.add_(weights * weight_decays[None, :, None])
    return grad_weights, probabilities.sum(0)


def _adam_loop(train_x: torch.Tensor, train_y: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor,
               lrs: torch.Tensor, weight_decays: torch.Tensor, epochs: int, batch_size: int, seed: int) -> None:
    num_samples = len(train_x)
    device = train_x.device
    moments = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for p in (weights, biases)}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    generator = torch.Generator().manual_seed(seed)
    total_steps = epochs * max(1, math.ceil(num_samples / batch_size))
    step = 0
    for _ in range(epochs):
        order = torch.randperm(num_samples, generator=generator).to(device)
        for start in range(0, num_samples, batch_size):
            index = order[start : start + batch_size]
            grads = _softmax_gradients(train_x.index_select(0, index), train_y[index], weights, biases, weight_decays)
            step += 1
            scale = 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total_steps))
            for param, grad in zip((weights, biases), grads):
                first, second = moments[id(param)]
                first.mul_(beta1).add_(grad, alpha=1 - beta1)
                second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (first / (1 - beta1**step)) / ((second / (1 - beta2**step)).sqrt_() + eps)
                step_size = (lrs * scale).view(*([1] * (param.ndim - 2)), -1, 1)
                param.sub_(update.mul_(step_size))


def linear_scores(features: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """Logits ``(G, N, C)`` of stacked models (``weights (G, D, C)``) on ``features (N, D)``."""
    return torch.einsum("nd,gdc->gnc", features, weights) + biases[:, None, :]


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train`` and ``others`` standardised with ``train``'s per-feature mean and std (a parameter-free
    BatchNorm, as in MAE's probe); constant features stay at 0."""
    mean, std = train.mean(0), train.std(0).nan_to_num(1.0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


class LinearProbe:
    """The ``linear`` protocol: one linear classifier per backbone stage on frozen features.

    For every stage, all (lr, weight decay) candidates of the grid train together in one pass (see
    :func:`train_linear_models`) on train minus a stratified ``val_fraction`` hold-out and are scored
    there; the best candidate is retrained on all labelled train images (``refit``) and scored once
    on test. The "best stage" is also chosen by validation accuracy. Test never influences a choice.
    Features are standardised with train statistics, which lets one grid fit every stage.

    ``shots_per_class=k`` (semi-supervised, RotNet's 20 / 100 / 400 labels per class): the validation
    split is carved from all labelled train images first and the k images per class are drawn from
    the rest (:func:`pretextlab.evaluation.splits.labelled_split`); the chosen candidate is the one
    trained on those k images (no refit: the validation labels never train the classifier).
    ``device``: ``auto`` uses CUDA when available (features are moved there), else the CPU.
    """

    name = "linear"

    def __init__(
        self,
        epochs: int = 15,
        lrs: list[float] | tuple[float, ...] = (1e-3, 3e-3),
        weight_decays: list[float] | tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2),
        val_fraction: float = 0.1,
        batch_size: int = 1024,
        shots_per_class: int | None = None,
        refit: bool = True,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"eval linear val_fraction must lie in (0, 1), got {val_fraction}")
        if epochs < 1:
            raise ValueError(f"eval linear epochs must be >= 1, got {epochs}")
        if batch_size < 1:
            raise ValueError(f"eval linear batch_size must be >= 1, got {batch_size}")
        if not lrs or not weight_decays:
            raise ValueError("eval linear lrs and weight_decays must each list at least one value")
        if any(lr <= 0 for lr in lrs) or any(wd < 0 for wd in weight_decays):
            raise ValueError(f"eval linear lrs must be > 0 and weight_decays >= 0, got {list(lrs)}, {list(weight_decays)}")
        if shots_per_class is not None and shots_per_class < 1:
            raise ValueError(f"eval linear shots_per_class must be >= 1 or null, got {shots_per_class}")
        self.epochs = epochs
        self.lrs = [float(x) for x in lrs]
        self.weight_decays = [float(x) for x in weight_decays]
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.shots_per_class = shots_per_class
        self.refit = refit and shots_per_class is None
        self.seed = seed
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))

    @property
    def grid(self) -> list[tuple[float, float]]:
        """Every ``(lr, weight decay)`` pair the validation sweep tries, in a fixed order."""
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]

    def _train(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
               grid: list[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        lrs = torch.tensor([g[0] for g in grid])
        wds = torch.tensor([g[1] for g in grid])
        return train_linear_models(x, y, num_classes, lrs, wds, self.epochs, self.batch_size, self.seed)

    def fit_stage(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                  fit_index: torch.Tensor, val_index: torch.Tensor, num_classes: int) -> dict[str, Any]:
        """One stage: every candidate on ``fit_index``, choice on ``val_index``, test scored once."""
        train_x, test_x = standardise(train_x.to(self.device), test_x.to(self.device))
        train_y, grid = train_y.to(self.device), self.grid
        fit_index, val_index = fit_index.to(self.device), val_index.to(self.device)
        weights, biases = self._train(train_x[fit_index], train_y[fit_index], num_classes, grid)
        best, val_top1, grid_scores = 0, None, []
        if len(val_index) > 0:
            val_logits = linear_scores(train_x[val_index], weights, biases)
            scores = [topk_accuracy(val_logits[g], train_y[val_index], 1) for g in range(len(grid))]
            grid_scores = [{"lr": g[0], "weight_decay": g[1], "val_top1": v} for g, v in zip(grid, scores)]
            best = max(range(len(grid)), key=lambda g: scores[g])  # first maximum: ties keep grid order
            val_top1 = scores[best]
        weights, biases = weights[best : best + 1], biases[best : best + 1]
        if self.refit:
            everything = torch.cat([fit_index, val_index]).sort().values
            weights, biases = self._train(train_x[everything], train_y[everything], num_classes, [grid[best]])
        logits = linear_scores(test_x, weights, biases)[0].cpu()
        test_y = test_y.cpu()
        return {
            "top1": topk_accuracy(logits, test_y, 1),
            "top5": topk_accuracy(logits, test_y, 5),
            "val_top1": val_top1,
            "lr": grid[best][0],
            "weight_decay": grid[best][1],
            "dim": int(train_x.shape[1]),
            "grid": grid_scores,
        }

    def run(self, train: FeatureSet, test: FeatureSet, num_classes: int) -> dict[str, Any]:
        start = time.perf_counter()
        fit_index, val_index = labelled_split(train.labels, self.val_fraction, self.shots_per_class, self.seed)
        per_stage: dict[str, dict[str, Any]] = {}
        for stage in train.features:
            stage_start = time.perf_counter()
            per_stage[stage] = self.fit_stage(train.features[stage], train.labels, test.features[stage], test.labels,
                                              fit_index, val_index, num_classes)
            per_stage[stage]["seconds"] = time.perf_counter() - stage_start
            result = per_stage[stage]
            log.info("linear probe %s (%d features): top1 %.4f (val %s, lr %g, wd %g)", stage, result["dim"],
                     result["top1"], "n/a" if result["val_top1"] is None else f"{result['val_top1']:.4f}",
                     result["lr"], result["weight_decay"])
        stages = list(per_stage)
        last = stages[-1]
        # "Best stage" is chosen on the validation split, like every other probe choice; without
        # validation images there is no honest choice, so the last stage is reported.
        if all(per_stage[s]["val_top1"] is not None for s in stages):
            best_stage = max(stages, key=lambda s: per_stage[s]["val_top1"])
        else:
            best_stage = last
        return {
            "top1": per_stage[best_stage]["top1"],
            "top5": per_stage[best_stage]["top5"],
            "val_top1": per_stage[best_stage]["val_top1"],
            "best_stage": best_stage,
            "last_stage": last,
            "last_top1": per_stage[last]["top1"],
            "last_top5": per_stage[last]["top5"],
            "per_stage": per_stage,
            "shots_per_class": self.shots_per_class,
            "train_images": len(fit_index) + (len(val_index) if self.refit else 0),
            "val_images": len(val_index),
            "test_images": len(test.labels),
            "epochs": self.epochs,
            "val_fraction": self.val_fraction,
            "refit": self.refit,
            "seconds": time.perf_counter() - start,
        }
