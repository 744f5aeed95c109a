"""What every data source shares: a split of images, the source interface, the data error, the
bad-image policy and the decode cache folder.

A source yields uint8 ``(N, 3, H, W)`` images with int64 labels. Labels of ``-1`` mark unlabeled
images (e.g. STL-10's unlabeled split); every consumer ignores them. Normalisation statistics live
with the source, beside the data they describe.

The sources themselves, one module each: :mod:`~pretextlab.data.synthetic_source` (the embedded
scenes), :mod:`~pretextlab.data.image_folder_source` (a folder decoded into memory),
:mod:`~pretextlab.data.streaming_source` (a folder read during training),
:mod:`~pretextlab.data.torchvision_source` (CIFAR, STL-10) and :mod:`~pretextlab.data.voc` (VOC 2007).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

SplitName = Literal["pretrain", "train", "test"]
#: What a source does with a file it cannot decode (``data.source.on_bad_image``).
BAD_IMAGE_POLICIES = ("skip", "fail")


class DataError(ValueError):
    """A problem with the user's data (path, files, classes): the message names the fix."""


def check_bad_image_policy(on_bad_image: str) -> str:
    """``on_bad_image`` itself when it is one of :data:`BAD_IMAGE_POLICIES`, else one :class:`DataError` line."""
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DataError(f"data.source.on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
    return on_bad_image


def cache_dir() -> Path:
    """Where decoded splits are cached (``PRETEXTLAB_CACHE``, default ``~/.cache/pretextlab``)."""
    return Path(os.environ.get("PRETEXTLAB_CACHE", Path.home() / ".cache" / "pretextlab"))


@dataclass
class Split:
    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64, -1 = unlabeled

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise TypeError(f"a split holds (N, C, H, W) uint8 images, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)


class DataSource:
    """Base of all sources; subclasses implement :meth:`_load`."""

    name: str = "source"
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def load(self, split: SplitName) -> Split:
        return self._load(split)

    def _load(self, split: SplitName) -> Split:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "num_classes": self.num_classes, "image_size": self.image_size}


class FileSource(DataSource):
    """A source that decodes image files under ``root``: the options every such source takes
    (image folders in memory or streamed, VOC 2007), set and checked in one place.

    Each subclass still lists these keys in its own signature (they are its config keys); the root's
    existence is checked by the subclass, whose message names the layout it expects.
    """

    def __init__(self, root: str, image_size: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                 on_bad_image: str) -> None:
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.on_bad_image = check_bad_image_policy(on_bad_image)
        # None: the subclass's default statistics (computed from the data, or ImageNet's for VOC).
        self._given_mean, self._given_std = mean, std


    @property
    def mean(self) -> tuple[float, float, float]:  # type: ignore[override]
        if self._given_mean is not None:
            return tuple(self._given_mean)  # type: ignore[return-value]
        return self._statistics()[0]

    @property
    def std(self) -> tuple[float, float, float]:  # type: ignore[override]
        if self._given_std is not None:
            return tuple(self._given_std)  # type: ignore[return-value]
        return self._statistics()[1]

    def _statistics(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Per-channel mean and std of the source's own images, when none were given."""
        raise NotImplementedError(f"{type(self).__name__} has no default statistics: give data.source.mean/std")
