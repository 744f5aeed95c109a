"""Runs the configured protocols after pretraining; features are extracted once and shared."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from pretextlab.backbones.pooling import StagePooling
from pretextlab.evaluation.batchnorm import recalibrate_batchnorm
from pretextlab.evaluation.extract import (
    FeatureSet,
    extract_features,
    feature_fingerprint,
    load_cached_features,
    save_cached_features,
)
from pretextlab.evaluation.finetune import copy_encoder

log = logging.getLogger(__name__)

#: Sub-folder of ``cache_dir`` that holds extracted features.
CACHE_FOLDER = "eval_cache"


class FeatureProtocol(Protocol):
    name: str

    def run(self, train: FeatureSet, test: FeatureSet, num_classes: int) -> dict[str, Any]: ...


class ModelProtocol(Protocol):
    name: str

    def run_model(self, encoder: Any, datamodule: Any, device: str | torch.device) -> dict[str, Any]: ...


def resolve_stages(encoder: Any, stages: str | list[str]) -> list[str]:
    """``"all"`` → every stage; ``"last"`` → the last; a list is checked against the backbone."""
    names = list(encoder.stage_names)
    if stages == "all":
        return names
    if stages == "last":
        return names[-1:]
    wanted = [stages] if isinstance(stages, str) else list(stages)
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise ValueError(f"eval.stages names {unknown}, but the backbone's stages are {names}")
    # Keep the backbone's order so that the last listed stage is the deepest one.
    return [s for s in names if s in wanted]


def stage_pooling(eval_cfg: Any) -> StagePooling:
    """The :class:`StagePooling` of an ``eval`` config node (``pool_size``, ``pool_dim``, ``pool_grids``)."""
    size = eval_cfg.get("pool_size")
    grids = eval_cfg.get("pool_grids") or {}
    return StagePooling(target_dim=int(eval_cfg.get("pool_dim", 2048)), size=None if size is None else int(size),
                        grids={str(k): int(v) for k, v in dict(grids).items()})


def evaluate(
    encoder: Any,
    datamodule: Any,
    protocols: dict[str, Any],
    stages: str | list[str] = "all",
    pool_size: int | StagePooling = 1,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    recalibrate_bn: bool = False,
    bn_images: int = 10_000,
) -> dict[str, Any]:
    """Run every protocol; returns ``{protocol name: its result dict}``.

    Feature protocols (linear, kNN) share one extraction of the train and test splits; model
    protocols (fine-tuning) get the encoder and the datamodule themselves, and run after the
    feature protocols on a copy of the encoder. With ``cache_dir`` (train.py passes the run
    directory) the extracted features are saved under ``<cache_dir>/eval_cache/`` keyed by a
    fingerprint of the encoder's weights, stages, pooling and data, and reused by a re-run.
    ``recalibrate_bn``: every protocol sees a copy of the encoder whose BatchNorm statistics were
    re-estimated on up to ``bn_images`` training images (the random-init row; see
    :mod:`pretextlab.evaluation.batchnorm`); each result then records ``bn_recalibrated_images``.
    """
    results: dict[str, Any] = {}
    if not protocols:
        return results
    encoder = encoder.to(device)
    feature_protocols = {k: p for k, p in protocols.items() if hasattr(p, "run")}
    model_protocols = {k: p for k, p in protocols.items() if hasattr(p, "run_model")}
    unknown = sorted(set(protocols) - set(feature_protocols) - set(model_protocols))
    if unknown:
        raise TypeError(f"eval protocols {unknown} have neither run(train, test, num_classes) nor "
                        "run_model(encoder, datamodule, device)")
    notes: dict[str, Any] = {}
    if recalibrate_bn:
        encoder, notes["bn_recalibrated_images"] = _recalibrated(encoder, datamodule, bn_images, device)
    if feature_protocols:
        train, test, extraction = _features(encoder, datamodule, resolve_stages(encoder, stages), pool_size, device,
                                            cache_dir)
        for name, protocol in feature_protocols.items():
            results[name] = protocol.run(train, test, datamodule.num_classes)
            results[name].update(extraction)
            results[name].update(notes)
    for name, protocol in model_protocols.items():
        results[name] = protocol.run_model(encoder, datamodule, device)
        results[name].update(notes)
    return results


def _recalibrated(encoder: Any, datamodule: Any, max_images: int, device: str | torch.device) -> tuple[Any, int]:
    """A copy of ``encoder`` with BatchNorm statistics from training images (the original is untouched)."""
    copy = copy_encoder(encoder).to(device)
    seen = recalibrate_batchnorm(copy, datamodule.eval_dataloader("train"),
                                 lambda images: datamodule.prepare_images(images, augment=False), max_images, device)
    log.info("re-estimated BatchNorm statistics on %d training images", seen)
    return copy, seen


def _features(encoder: Any, datamodule: Any, stage_list: list[str], pool_size: int | StagePooling,
              device: str | torch.device,
              cache_dir: str | Path | None) -> tuple[FeatureSet, FeatureSet, dict[str, Any]]:
    """Train and test features, from the cache when the same weights were extracted before."""
    start = time.perf_counter()
    folder = Path(cache_dir) / CACHE_FOLDER if cache_dir is not None else None
    fingerprint = None
    if folder is not None:
        if hasattr(datamodule, "fingerprint_splits"):  # a streamed split stands in by its file listing
            data = datamodule.fingerprint_splits()
        else:
            data = {name: datamodule.split(name) for name in ("train", "test")} if hasattr(datamodule, "split") else None
        fingerprint = feature_fingerprint(encoder, stage_list, pool_size, data)
        cached = load_cached_features(folder, fingerprint)
        if cached is not None and all(set(fs.features) == set(stage_list) for fs in cached):
            log.info("loaded cached features %s from %s", fingerprint, folder)
            return cached[0], cached[1], {"extraction_seconds": time.perf_counter() - start, "features_cached": True}

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return datamodule.prepare_images(images, augment=False)

    train = extract_features(encoder, datamodule.eval_dataloader("train"), prepare, stage_list, pool_size, device)
    test = extract_features(encoder, datamodule.eval_dataloader("test"), prepare, stage_list, pool_size, device)
    if folder is not None and fingerprint is not None:
        save_cached_features(folder, fingerprint, train, test)
    seconds = time.perf_counter() - start
    log.info("extracted features of %d train / %d test images in %.1f s", len(train.labels), len(test.labels), seconds)
    return train, test, {"extraction_seconds": seconds, "features_cached": False}
