"""Runs the configured protocols after pretraining; features are extracted once and shared."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import torch

from pretextlab.evaluation.extract import FeatureSet, extract_features

log = logging.getLogger(__name__)


class FeatureProtocol(Protocol):
    name: str

    def run(self, train: FeatureSet, test: FeatureSet, num_classes: int) -> dict[str, Any]: ...


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


def evaluate(
    encoder: Any,
    datamodule: Any,
    protocols: dict[str, Any],
    stages: str | list[str] = "all",
    pool_size: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run every protocol; returns ``{protocol name: its result dict}``.

    Feature protocols (linear, kNN) share one extraction of the train and test splits; model
    protocols (fine-tuning) get the encoder and the datamodule themselves.
    """
    results: dict[str, Any] = {}
    if not protocols:
        return results
    encoder = encoder.to(device)
    feature_protocols = {k: p for k, p in protocols.items() if hasattr(p, "run")}
    model_protocols = {k: p for k, p in protocols.items() if hasattr(p, "run_model")}
    if feature_protocols:
        stage_list = resolve_stages(encoder, stages)
        start = time.perf_counter()

        def prepare(images: torch.Tensor) -> torch.Tensor:
            return datamodule.prepare_images(images, augment=False)

        train = extract_features(encoder, datamodule.eval_dataloader("train"), prepare, stage_list, pool_size, device)
        test = extract_features(encoder, datamodule.eval_dataloader("test"), prepare, stage_list, pool_size, device)
        extraction_seconds = time.perf_counter() - start
        log.info("extracted features of %d train / %d test images in %.1f s", len(train.labels),
                 len(test.labels), extraction_seconds)
        for name, protocol in feature_protocols.items():
            results[name] = protocol.run(train, test, datamodule.num_classes)
            results[name]["extraction_seconds"] = extraction_seconds
    for name, protocol in model_protocols.items():
        results[name] = protocol.run_model(encoder, datamodule, device)
    return results
