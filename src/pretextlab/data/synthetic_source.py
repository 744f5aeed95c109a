"""The embedded synthetic scenes as a data source: no files, no download."""

from __future__ import annotations

import functools

import numpy as np
import torch

from pretextlab.data.sources import DataError, DataSource, Split, SplitName
from pretextlab.data.synthetic import CLASS_NAMES, render_scenes


class SyntheticSource(DataSource):
    """The embedded scenes of :mod:`pretextlab.data.synthetic`; no files, no download."""

    name = "synthetic"

    def __init__(self, num_train: int = 5000, num_test: int = 1000, image_size: int = 32, seed: int = 0,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> None:
        if num_train < 1 or num_test < 1:
            raise DataError(f"synthetic data needs num_train and num_test >= 1, got {num_train}, {num_test}")
        self.num_train, self.num_test, self.image_size, self.seed = num_train, num_test, image_size, seed
        self.num_classes = len(CLASS_NAMES)
        self.class_names = CLASS_NAMES
        self._cache: dict[str, Split] = {}
        if mean is None or std is None:
            # Statistics of the generator itself (a fixed 2,000-image draw): independent of num_train.
            probe, _ = _rendered(2000, seed, 7, image_size)
            pixels = probe.float().div(255).permute(1, 0, 2, 3).reshape(3, -1)
            mean = tuple(pixels.mean(1).tolist())
            std = tuple(pixels.std(1).tolist())
        self.mean = tuple(mean)  # type: ignore[assignment]
        self.std = tuple(std)  # type: ignore[assignment]

    def _load(self, split: SplitName) -> Split:
        key = "test" if split == "test" else "train"
        if key not in self._cache:
            count = self.num_test if key == "test" else self.num_train
            images, labels = _rendered(count, self.seed, 1 if key == "test" else 0, self.image_size)
            self._cache[key] = Split(images, labels)
        return self._cache[key]


@functools.lru_cache(maxsize=8)
def _rendered(count: int, seed: int, split: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A sweep runs many jobs in one process: render each split once.
    return render_scenes(np.arange(count), seed=seed, split=split, image_size=image_size)
