"""Frozen-feature extraction, once per split, for every stage at the same time (optionally cached)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pretextlab.backbones.pooling import StagePooling

log = logging.getLogger(__name__)

#: Cache files are named ``features-<fingerprint>.pt`` inside the cache directory.
CACHE_PREFIX = "features-"


@dataclass
class FeatureSet:
    """Pooled features of one split: ``{stage: (N, D) float32}`` and ``(N,)`` labels, on CPU."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "labels": self.labels}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureSet:
        return cls(dict(payload["features"]), payload["labels"])


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    stages: list[str],
    pool_size: int | StagePooling = 1,
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
            outputs = cast(Any, encoder).forward_stages(images, stages, pool_size)
            for stage in stages:
                collected[stage].append(outputs[stage].float().cpu())
            labels.append(batch_labels.cpu())
    finally:
        encoder.train(was_training)
    return FeatureSet({s: torch.cat(v) for s, v in collected.items()}, torch.cat(labels))


def _update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    # Hash the raw bytes through a uint8 view: works for every dtype numpy cannot hold (bfloat16).
    digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def feature_fingerprint(encoder: nn.Module, stages: list[str], pool_size: int | StagePooling,
                        data: dict[str, Any] | None = None) -> str:
    """A hash of everything extracted features depend on: weights and buffers, stages, pooling, input
    preparation, and (when given) the split tensors. Different weights ⇒ a different cache file."""
    digest = hashlib.blake2b(digest_size=16)
    pool = pool_size.describe() if isinstance(pool_size, StagePooling) else pool_size
    digest.update(f"stages={list(stages)};pool={pool};".encode())
    prepare = getattr(encoder, "prepare", None)
    digest.update(f"encoder={type(encoder).__qualname__};prepare={getattr(prepare, '__qualname__', None)};".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        _update_with_tensor(digest, tensor)
    for split_name, split in sorted((data or {}).items()):
        digest.update(split_name.encode())
        _update_with_tensor(digest, split.images)
        _update_with_tensor(digest, split.labels)
    return digest.hexdigest()


def load_cached_features(cache_dir: Path, fingerprint: str) -> tuple[FeatureSet, FeatureSet] | None:
    """The cached ``(train, test)`` features for ``fingerprint``, or None (missing or unreadable)."""
    path = Path(cache_dir) / f"{CACHE_PREFIX}{fingerprint}.pt"
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureSet.from_dict(payload["train"]), FeatureSet.from_dict(payload["test"])
    except Exception as error:  # a truncated or foreign file is recomputed, never trusted
        log.warning("ignoring unreadable feature cache %s (%s)", path, error)
        return None


def save_cached_features(cache_dir: Path, fingerprint: str, train: FeatureSet, test: FeatureSet) -> Path:
    """Write the features atomically and remove caches of other fingerprints (stale weights)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{CACHE_PREFIX}{fingerprint}.pt"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=cache_dir)
    os.close(fd)
    try:
        torch.save({"train": train.to_dict(), "test": test.to_dict(), "fingerprint": fingerprint}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in cache_dir.glob(f"{CACHE_PREFIX}*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return path
