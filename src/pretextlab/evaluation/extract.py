"""Frozen-feature extraction, once per split, for every stage at the same time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FeatureSet:
    """Pooled features of one split: ``{stage: (N, D) float32}`` and ``(N,)`` labels, on CPU."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    batches,
    prepare,
    stages: list[str],
    pool_size: int = 1,
    device: torch.device | str = "cpu",
) -> FeatureSet:
    """Run ``encoder.forward_stages`` over every batch of ``batches`` in eval mode.

    ``batches`` yields ``(uint8 images, labels)``; ``prepare(images)`` turns them into float [0, 1]
    without augmentation. The encoder's train/eval mode is restored afterwards.
    """
    was_training = encoder.training
    encoder.eval()
    collected: dict[str, list[torch.Tensor]] = {stage: [] for stage in stages}
    labels: list[torch.Tensor] = []
    try:
        for images, batch_labels in batches:
            images = prepare(images.to(device, non_blocking=True))
            outputs = encoder.forward_stages(images, stages, pool_size)
            for stage in stages:
                collected[stage].append(outputs[stage].float().cpu())
            labels.append(batch_labels.cpu())
    finally:
        encoder.train(was_training)
    return FeatureSet({s: torch.cat(v) for s, v in collected.items()}, torch.cat(labels))
