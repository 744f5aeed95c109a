"""Weighted k-nearest-neighbour classification on L2-normalised frozen features."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from pretextlab.evaluation.extract import FeatureSet
from pretextlab.evaluation.linear import topk_accuracy
from pretextlab.evaluation.splits import select_shots

log = logging.getLogger(__name__)


def knn_scores(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    query_x: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Class votes ``(Q, num_classes)`` of a weighted k-NN (InstDisc / DINO rule).

    Both sides are L2-normalised; each query's ``k`` most cosine-similar training points vote for
    their label with weight ``exp(similarity / temperature)``. Queries are processed
    ``chunk_size`` at a time, so peak memory is ``chunk_size × len(train)`` similarities rather
    than the full query × train matrix.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = min(k, len(train_x))
    train_n = torch.nn.functional.normalize(train_x.float(), dim=1)
    query_n = torch.nn.functional.normalize(query_x.float(), dim=1)
    votes = torch.zeros(len(query_x), num_classes)
    for start in range(0, len(query_x), chunk_size):
        similarity = query_n[start : start + chunk_size] @ train_n.T
        top_sim, top_index = similarity.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        chunk_votes = votes[start : start + chunk_size]
        chunk_votes.scatter_add_(1, train_y[top_index], weights)
    return votes


class KNNProbe:
    """The ``knn`` protocol: weighted k-NN on the pooled features of one stage (the last by default).

    Defaults follow InstDisc/DINO: k = 200 neighbours, temperature 0.1. It has no trained
    parameters and no hyper-parameter search, so it needs no validation split. ``shots_per_class``
    restricts the neighbour pool to a fixed, seeded k-per-class subset of the labelled images
    (the same subset the linear probe's low-shot option draws with the same seed).
    """

    name = "knn"

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        stage: str = "last",
        chunk_size: int = 256,
        shots_per_class: int | None = None,
        seed: int = 0,
    ) -> None:
        if k < 1:
            raise ValueError(f"eval knn k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"eval knn temperature must be > 0, got {temperature}")
        if chunk_size < 1:
            raise ValueError(f"eval knn chunk_size must be >= 1, got {chunk_size}")
        if shots_per_class is not None and shots_per_class < 1:
            raise ValueError(f"eval knn shots_per_class must be >= 1 or null, got {shots_per_class}")
        self.k = k
        self.temperature = temperature
        self.stage = stage
        self.chunk_size = chunk_size
        self.shots_per_class = shots_per_class
        self.seed = seed

    def _stage(self, available: list[str]) -> str:
        if self.stage == "last":
            return available[-1]
        if self.stage not in available:
            raise ValueError(
                f"eval knn stage={self.stage!r} was not extracted; extracted stages are {available} "
                "(set eval.protocols.knn.stage to one of them, or to 'last', or widen eval.stages)"
            )
        return self.stage

    def run(self, train: FeatureSet, test: FeatureSet, num_classes: int) -> dict[str, Any]:
        start = time.perf_counter()
        stage = self._stage(list(train.features))
        labelled = torch.nonzero(train.labels >= 0, as_tuple=False).flatten()
        if len(labelled) == 0:
            raise ValueError("the kNN probe needs labelled training images, but every train label is -1")
        if self.shots_per_class is not None:
            labelled = labelled[select_shots(train.labels[labelled], self.shots_per_class, self.seed)]
        votes = knn_scores(train.features[stage][labelled], train.labels[labelled], test.features[stage],
                           num_classes, self.k, self.temperature, self.chunk_size)
        top1, top5 = topk_accuracy(votes, test.labels, 1), topk_accuracy(votes, test.labels, 5)
        log.info("kNN probe %s (k=%d, T=%g): top1 %.4f", stage, self.k, self.temperature, top1)
        return {
            "top1": top1,
            "top5": top5,
            "stage": stage,
            "k": min(self.k, len(labelled)),
            "temperature": self.temperature,
            "shots_per_class": self.shots_per_class,
            "train_images": len(labelled),
            "test_images": len(test.labels),
            "seconds": time.perf_counter() - start,
        }
