"""Linear probe on frozen features, with its hyper-parameters chosen on a validation split of train."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pretextlab.evaluation.extract import FeatureSet
from pretextlab.evaluation.splits import select_shots, stratified_split

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
    batch_size: int = 512,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``S × G`` softmax regressions at once: one per stage ``s`` and grid point ``g``.

    ``train_x`` is ``(S, N, D)`` (stages zero-padded to a common width: a zero input column gets no
    gradient from the data and stays at zero); ``lrs`` and ``weight_decays`` are ``(S, G)``.
    Every model sees the same minibatches and all weights live in one ``(S, G, D, C)`` tensor, so a
    step is one batched matmul instead of S·G small Python-level steps: on a busy 2-core CPU the
    probe's cost is dominated by per-op overhead, not FLOPs. The optimiser is Adam with cosine
    decay, written out so each model keeps its own learning rate; ``weight_decay`` is an L2 penalty
    ``wd/2 · ||W||²`` on the weights (not the bias) added to the mean cross-entropy. Weights start
    at zero, so the result depends only on the (seeded) data order.
    Returns ``(weights (S, G, D, C), biases (S, G, C))``.
    """
    if train_x.ndim != 3:
        raise ValueError(f"train_x must be (stages, samples, dim), got shape {tuple(train_x.shape)}")
    num_stages, num_samples, dim = train_x.shape
    num_models = lrs.shape[1]
    device = train_x.device
    weights = torch.zeros(num_stages, num_models, dim, num_classes, device=device, requires_grad=True)
    biases = torch.zeros(num_stages, num_models, num_classes, device=device, requires_grad=True)
    lrs, weight_decays = lrs.to(device, torch.float32), weight_decays.to(device, torch.float32)
    copies = num_stages * num_models
    step_work = copies * min(batch_size, num_samples) * dim * num_classes
    threads = 1 if device.type == "cpu" and step_work < SINGLE_THREAD_WORK else None
    with cpu_threads(threads):
        _adam_loop(train_x, train_y, num_classes, weights, biases, lrs, weight_decays, epochs, batch_size, seed)
    return weights.detach(), biases.detach()


def _adam_loop(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, weights: torch.Tensor,
               biases: torch.Tensor, lrs: torch.Tensor, weight_decays: torch.Tensor, epochs: int, batch_size: int,
               seed: int) -> None:
    num_stages, num_samples, _ = train_x.shape
    num_models = lrs.shape[1]
    device = train_x.device
    state = {p: (torch.zeros_like(p), torch.zeros_like(p)) for p in (weights, biases)}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, math.ceil(num_samples / batch_size))
    total_steps = epochs * steps_per_epoch
    copies = num_stages * num_models
    step = 0
    for _ in range(epochs):
        order = torch.randperm(num_samples, generator=generator).to(device)
        # One gather per epoch; the minibatches below are then free contiguous slices.
        shuffled_x, shuffled_y = train_x.index_select(1, order), train_y[order]
        for start in range(0, num_samples, batch_size):
            inputs = shuffled_x[:, start : start + batch_size]
            targets = shuffled_y[start : start + batch_size]
            logits = torch.einsum("snd,sgdc->sgnc", inputs, weights) + biases[:, :, None, :]
            # Summing the per-model mean losses keeps every model's gradient its own.
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, num_classes), targets.repeat(copies), reduction="sum"
            ) / len(targets)
            loss = loss + 0.5 * (weight_decays[:, :, None, None] * weights.square()).sum()
            weights.grad = biases.grad = None
            loss.backward()
            step += 1
            scale = 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total_steps))
            with torch.no_grad():
                for param in (weights, biases):
                    grad = param.grad
                    assert grad is not None
                    first, second = state[param]
                    first.mul_(beta1).add_(grad, alpha=1 - beta1)
                    second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    update = (first / (1 - beta1**step)) / ((second / (1 - beta2**step)).sqrt() + eps)
                    step_size = (lrs * scale).view(num_stages, num_models, *([1] * (param.ndim - 2)))
                    param.sub_(step_size * update)


def linear_scores(features: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """Logits ``(S, G, N, C)`` of stacked models (``weights (S, G, D, C)``) on ``features (S, N, D)``."""
    return torch.einsum("snd,sgdc->sgnc", features, weights) + biases[:, :, None, :]


def _stack_stages(stage_features: list[torch.Tensor]) -> torch.Tensor:
    """``(S, N, D_max)``: each stage's features, zero-padded on the right to the widest stage."""
    width = max(f.shape[1] for f in stage_features)
    return torch.stack([nn.functional.pad(f, (0, width - f.shape[1])) for f in stage_features])


#: Stages are trained together while their zero-padded stack stays below this many bytes; larger
#: feature sets (e.g. ResNet-50 on 50k images) are probed stage by stage to bound memory.
STACK_BUDGET_BYTES = 512 * 2**20


class LinearProbe:
    """The ``linear`` protocol: one linear classifier per backbone stage on frozen features.

    For every stage, all (lr, weight decay) pairs of the grid are trained on train minus a
    stratified ``val_fraction`` hold-out and scored there; the best pair is retrained on all of
    train and scored once on test. The "best stage" is also chosen by validation accuracy. Test
    never influences a choice. Features are standardised with train statistics (a parameter-free
    BatchNorm, as in MAE's probe), which lets one lr grid fit all stages and backbones. Stages and
    grid points train side by side in one batched model (see :func:`train_linear_models`).

    ``shots_per_class=k`` trains (and validates) on a fixed, seeded choice of k labelled images per
    class instead of all labels. With k = 1 no validation image is left, so the first grid point is
    used without a sweep and the last stage is reported (``val_top1: null``).
    ``device``: ``auto`` uses CUDA when available (features are moved there), else the CPU.
    """

    name = "linear"

    def __init__(
        self,
        epochs: int = 30,
        lrs: list[float] | tuple[float, ...] = (0.01, 0.03, 0.1, 0.3),
        weight_decays: list[float] | tuple[float, ...] = (0.0, 1e-3),
        val_fraction: float = 0.1,
        batch_size: int = 512,
        shots_per_class: int | None = None,
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
        self.seed = seed
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))

    @property
    def grid(self) -> list[tuple[float, float]]:
        """Every ``(lr, weight decay)`` pair the validation sweep tries, in a fixed order."""
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]

    def fit_stages(self, train: dict[str, torch.Tensor], train_y: torch.Tensor, test: dict[str, torch.Tensor],
                   test_y: torch.Tensor, num_classes: int) -> dict[str, dict[str, Any]]:
        """Per-stage results: validation sweep on a split of ``train``, refit on all of it, test once."""
        stages = list(train)
        standardised_train, standardised_test = [], []
        for stage in stages:
            mean, std = train[stage].mean(0), train[stage].std(0).nan_to_num(1.0).clamp_min(1e-6)
            standardised_train.append((train[stage] - mean) / std)
            standardised_test.append((test[stage] - mean) / std)
        train_x = _stack_stages(standardised_train).to(self.device)
        test_x = _stack_stages(standardised_test).to(self.device)
        train_y, num_stages, grid = train_y.to(self.device), len(stages), self.grid
        fit_index, val_index = stratified_split(train_y.cpu(), self.val_fraction, self.seed)
        fit_index, val_index = fit_index.to(self.device), val_index.to(self.device)

        best = [0] * num_stages
        val_top1: list[float | None] = [None] * num_stages
        grid_scores: list[list[dict[str, float]]] = [[] for _ in stages]
        if len(val_index) > 0:
            lr = torch.tensor([[g[0] for g in grid]] * num_stages)
            wd = torch.tensor([[g[1] for g in grid]] * num_stages)
            weights, biases = train_linear_models(train_x[:, fit_index], train_y[fit_index], num_classes, lr, wd,
                                                  self.epochs, self.batch_size, self.seed)
            with torch.no_grad():
                val_logits = linear_scores(train_x[:, val_index], weights, biases)
            for s in range(num_stages):
                scores = [topk_accuracy(val_logits[s, g], train_y[val_index], 1) for g in range(len(grid))]
                grid_scores[s] = [{"lr": g[0], "weight_decay": g[1], "val_top1": v} for g, v in zip(grid, scores)]
                best[s] = max(range(len(grid)), key=lambda g: scores[g])  # first maximum: ties keep grid order
                val_top1[s] = scores[best[s]]
        lr = torch.tensor([[grid[best[s]][0]] for s in range(num_stages)])
        wd = torch.tensor([[grid[best[s]][1]] for s in range(num_stages)])
        weights, biases = train_linear_models(train_x, train_y, num_classes, lr, wd, self.epochs, self.batch_size,
                                              self.seed)
        with torch.no_grad():
            logits = linear_scores(test_x, weights, biases)[:, 0].cpu()
        test_y = test_y.cpu()
        return {
            stage: {
                "top1": topk_accuracy(logits[s], test_y, 1),
                "top5": topk_accuracy(logits[s], test_y, 5),
                "val_top1": val_top1[s],
                "lr": grid[best[s]][0],
                "weight_decay": grid[best[s]][1],
                "grid": grid_scores[s],
            }
            for s, stage in enumerate(stages)
        }

    def _stage_groups(self, train: FeatureSet, num_train: int) -> list[list[str]]:
        stages = list(train.features)
        width = max(train.features[s].shape[1] for s in stages)
        if num_train * width * len(stages) * 4 <= STACK_BUDGET_BYTES:
            return [stages]
        return [[stage] for stage in stages]

    def run(self, train: FeatureSet, test: FeatureSet, num_classes: int) -> dict[str, Any]:
        start = time.perf_counter()
        labelled = torch.nonzero(train.labels >= 0, as_tuple=False).flatten()
        if len(labelled) == 0:
            raise ValueError("the linear probe needs labelled training images, but every train label is -1")
        if self.shots_per_class is not None:
            labelled = labelled[select_shots(train.labels[labelled], self.shots_per_class, self.seed)]
        train_y = train.labels[labelled]
        per_stage: dict[str, dict[str, Any]] = {}
        for group in self._stage_groups(train, len(labelled)):
            per_stage.update(self.fit_stages({s: train.features[s][labelled] for s in group}, train_y,
                                             {s: test.features[s] for s in group}, test.labels, num_classes))
        for stage, result in per_stage.items():
            log.info("linear probe %s: top1 %.4f (val %s, lr %g, wd %g)", stage, result["top1"],
                     "n/a" if result["val_top1"] is None else f"{result['val_top1']:.4f}", result["lr"],
                     result["weight_decay"])
        stages = list(per_stage)
        last = stages[-1]
        # "Best stage" is chosen on the validation split, like every other probe choice; without
        # validation images (1-shot) there is no honest choice, so the last stage is reported.
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
            "train_images": len(labelled),
            "test_images": len(test.labels),
            "epochs": self.epochs,
            "val_fraction": self.val_fraction,
            "seconds": time.perf_counter() - start,
        }
