"""RotNet's CIFAR-10 protocol (Gidaris et al. 2018): non-linear classifiers on frozen stage maps.

Two classifiers per stage, trained on the unpooled map of the frozen encoder with augmented images
(crop with padding + flip), as in the paper's CIFAR-10 tables:

- ``mlp``: flatten → linear 200 (no bias) → BN → ReLU → linear 200 (no bias) → BN → ReLU → linear;
- ``conv``: a NIN block on the map (3×3 conv 192 → 1×1 conv 192 → 1×1 conv 192, each BN + ReLU) →
  global average pool → linear.

Optimiser and schedule as the paper's classifiers: SGD with nesterov momentum 0.9, weight decay 5e-4,
batch 128, learning rate 0.1 divided by 5 at fixed points of training (the MLP for 50 epochs, steps
at 20 / 40 / 45; the conv block for 100 epochs, steps at 35 / 70 / 85: the same fractions are kept
for other epoch counts). Its block-2 figures: 89.06 (MLP), 91.16 (conv), random init + conv 72.50.

Unlike the paper, which reports block 2 and trains on all 50,000 images, the stage reported as
``top1`` is chosen by the conv classifier's accuracy on a validation split carved from train (the
classifiers train on the rest), so no choice depends on test.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, cast

import torch
from torch import nn

from pretextlab.backbones.pooling import StagePooling
from pretextlab.evaluation.linear import topk_accuracy
from pretextlab.evaluation.splits import labelled_split

log = logging.getLogger(__name__)

#: Pools nothing: the rule's largest grid is the whole map (every map side divides itself).
UNPOOLED = StagePooling(target_dim=2**62)
HEADS = ("mlp", "conv")
#: Fractions of training at which the learning rate is divided by 5 (the paper's 20/40/45 of 50 epochs
#: for the MLP, 35/70/85 of 100 for the conv block).
MILESTONES = {"mlp": (0.4, 0.8, 0.9), "conv": (0.35, 0.7, 0.85)}


def mlp_classifier(in_features: int, num_classes: int, hidden: int = 200) -> nn.Module:
    """The paper's "non-linear" classifier on a flattened map."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def conv_classifier(in_channels: int, num_classes: int, width: int = 192) -> nn.Module:
    """The paper's conv-block classifier: one NIN block, global average pool, linear."""
    return nn.Sequential(
        *_conv_bn_relu(in_channels, width, 3), *_conv_bn_relu(width, width, 1), *_conv_bn_relu(width, width, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def step_lr(epoch: int, epochs: int, milestones: tuple[float, ...], lr: float, gamma: float = 0.2) -> float:
    """``lr`` times ``gamma`` per milestone (a fraction of ``epochs``) already passed at ``epoch``."""
    return lr * gamma ** sum(epoch >= round(fraction * epochs) for fraction in milestones)


class RotNetClassifiers:
    """The ``rotnet_cifar`` protocol: the paper's MLP and conv-block classifiers on every chosen stage.

    All classifiers train in one loop: each batch goes through the frozen encoder once (augmented)
    and every (stage, head) pair takes its own SGD step. Stages whose map is not spatial (ViT tokens)
    get the MLP on their pooled features only. ``shots_per_class=k``: RotNet's semi-supervised
    setting (k labelled images per class, disjoint from validation).
    """

    name = "rotnet_cifar"

    def __init__(
        self,
        mlp_epochs: int = 50,
        conv_epochs: int = 100,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 128,
        augment: bool = True,
        val_fraction: float = 0.1,
        stages: str | list[str] = "all",
        shots_per_class: int | None = None,
        seed: int = 0,
    ) -> None:
        if min(mlp_epochs, conv_epochs) < 0 or max(mlp_epochs, conv_epochs) < 1:
            raise ValueError(f"eval rotnet_cifar needs epochs >= 0 (one of them >= 1), got {mlp_epochs}, {conv_epochs}")
        if lr <= 0 or weight_decay < 0 or not 0 <= momentum < 1 or batch_size < 2:
            raise ValueError("eval rotnet_cifar needs lr > 0, weight_decay >= 0, 0 <= momentum < 1, batch_size >= 2")
        self.epochs = {"mlp": mlp_epochs, "conv": conv_epochs}
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.batch_size, self.augment, self.val_fraction = batch_size, augment, val_fraction
        self.stages, self.shots_per_class, self.seed = stages, shots_per_class, seed

    def _heads(self, maps: dict[str, torch.Tensor], num_classes: int, device: Any) -> dict[tuple[str, str], nn.Module]:
        heads: dict[tuple[str, str], nn.Module] = {}
        for stage, output in maps.items():
            if self.epochs["mlp"] > 0:
                heads[(stage, "mlp")] = mlp_classifier(output[0].numel(), num_classes)
            if self.epochs["conv"] > 0 and output.ndim == 4:
                heads[(stage, "conv")] = conv_classifier(output.shape[1], num_classes)
        return {key: head.to(device) for key, head in heads.items()}

    def _stage_maps(self, encoder: Any, images: torch.Tensor, stages: list[str]) -> dict[str, torch.Tensor]:
        """Unpooled maps ``(B, C, h, w)`` of spatial stages (pooled features of token stages)."""
        with torch.no_grad():
            flat = encoder.forward_stages(images, stages, UNPOOLED)
        maps = {}
        for stage, features in flat.items():
            channels = int(encoder.stage_feature_dim(stage, 1))
            side = math.isqrt(features.shape[1] // channels)
            spatial = side * side * channels == features.shape[1] and features.shape[1] != channels
            maps[stage] = features.view(len(features), channels, side, side) if spatial else features
        return maps

    def run_model(self, encoder: nn.Module, datamodule: Any, device: str | torch.device) -> dict[str, Any]:
        from pretextlab.evaluation.runner import resolve_stages

        start = time.perf_counter()
        split = datamodule.split("train")
        fit_index, val_index = labelled_split(split.labels, self.val_fraction, self.shots_per_class, self.seed)
        stages = resolve_stages(encoder, self.stages)
        was_training = encoder.training
        encoder = encoder.to(device).eval()  # frozen: BatchNorm keeps its statistics, no gradient reaches it
        try:
            return self._run(encoder, datamodule, split, fit_index, val_index, stages, device, start)
        finally:
            encoder.train(was_training)

    def _run(self, encoder: Any, datamodule: Any, split: Any, fit_index: torch.Tensor, val_index: torch.Tensor,
             stages: list[str], device: Any, start: float) -> dict[str, Any]:
        sample = datamodule.prepare_images(split.images[fit_index[:2]].to(device), augment=False)
        heads = self._heads(self._stage_maps(encoder, sample, stages), datamodule.num_classes, device)
        optimizers: dict[tuple[str, str], torch.optim.Optimizer] = {key: torch.optim.SGD(head.parameters(), lr=self.lr, momentum=self.momentum,
                                           weight_decay=self.weight_decay, nesterov=self.momentum > 0)
                      for key, head in heads.items()}
        self._train(encoder, datamodule, split, fit_index, stages, heads, optimizers, device)
        val = self._score(encoder, datamodule, split.images[val_index], split.labels[val_index], stages, heads, device)
        test_split = datamodule.split("test")
        test = self._score(encoder, datamodule, test_split.images, test_split.labels, stages, heads, device)
        return self._result(stages, val, test, len(fit_index), len(val_index), len(test_split.labels),
                            time.perf_counter() - start)

    def _train(self, encoder: Any, datamodule: Any, split: Any, fit_index: torch.Tensor, stages: list[str],
               heads: dict[tuple[str, str], nn.Module], optimizers: dict[tuple[str, str], torch.optim.Optimizer],
               device: Any) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        batch_size = min(self.batch_size, len(fit_index))
        devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # augmentation draws from the global RNG
            torch.manual_seed(self.seed)
            for epoch in range(max(self.epochs.values())):
                active = [key for key in heads if epoch < self.epochs[key[1]]]
                for key in active:
                    for group in optimizers[key].param_groups:
                        group["lr"] = step_lr(epoch, self.epochs[key[1]], MILESTONES[key[1]], self.lr)
                    heads[key].train()
                order = fit_index[torch.randperm(len(fit_index), generator=generator)]
                # Drop a ragged last batch: a batch of one breaks BatchNorm's training statistics.
                for begin in range(0, len(order) - batch_size + 1, batch_size):
                    index = order[begin : begin + batch_size]
                    images = datamodule.prepare_images(split.images[index].to(device), augment=self.augment)
                    maps = self._stage_maps(encoder, images, stages)
                    targets = split.labels[index].to(device)
                    for key in active:
                        loss = nn.functional.cross_entropy(heads[key](maps[key[0]]), targets)
                        optimizers[key].zero_grad(set_to_none=True)
                        loss.backward()
                        optimizers[key].step()

    def _score(self, encoder: Any, datamodule: Any, images: torch.Tensor, labels: torch.Tensor, stages: list[str],
               heads: dict[tuple[str, str], nn.Module], device: Any) -> dict[tuple[str, str], float | None]:
        if len(labels) == 0:
            return {key: None for key in heads}
        logits: dict[tuple[str, str], list[torch.Tensor]] = {key: [] for key in heads}
        for head in heads.values():
            head.eval()
        with torch.no_grad():
            for begin in range(0, len(labels), 500):
                batch = datamodule.prepare_images(images[begin : begin + 500].to(device), augment=False)
                maps = self._stage_maps(encoder, batch, stages)
                for key, head in heads.items():
                    logits[key].append(head(maps[key[0]]).float().cpu())
        return {key: topk_accuracy(torch.cat(value), labels.cpu(), 1) for key, value in logits.items()}

    def _result(self, stages: list[str], val: dict[tuple[str, str], float | None],
                test: dict[tuple[str, str], float | None], fit: int, held: int, tested: int,
                seconds: float) -> dict[str, Any]:
        per_stage: dict[str, dict[str, Any]] = {}
        for stage in stages:
            head = "conv" if (stage, "conv") in test else "mlp"
            per_stage[stage] = {"top1": test.get((stage, head)), "val_top1": val.get((stage, head)), "head": head}
            for name in HEADS:
                if (stage, name) in test:
                    per_stage[stage][f"{name}_top1"] = test[(stage, name)]
                    per_stage[stage][f"{name}_val_top1"] = val[(stage, name)]
        scored = [s for s in stages if per_stage[s]["val_top1"] is not None]
        best = max(scored, key=lambda s: cast(float, per_stage[s]["val_top1"])) if scored else stages[-1]
        log.info("rotnet_cifar: best stage %s (%s head) test top1 %s", best, per_stage[best]["head"],
                 per_stage[best]["top1"])
        return {
            "top1": per_stage[best]["top1"], "val_top1": per_stage[best]["val_top1"], "best_stage": best,
            "last_stage": stages[-1], "last_top1": per_stage[stages[-1]]["top1"], "per_stage": per_stage,
            "epochs": dict(self.epochs), "shots_per_class": self.shots_per_class, "train_images": fit,
            "val_images": held, "test_images": tested, "seconds": seconds,
        }
