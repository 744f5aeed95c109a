"""Where images come from. A source yields uint8 ``(N, 3, H, W)`` images with int64 labels.

Labels of ``-1`` mark unlabeled images (e.g. STL-10's unlabeled split); every consumer ignores them.
Normalisation statistics live here, with the data they describe.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pretextlab.data.synthetic import CLASS_NAMES, render_scenes

log = logging.getLogger(__name__)

SplitName = Literal["pretrain", "train", "test"]


class DataError(ValueError):
    """A problem with the user's data (path, files, classes): the message names the fix."""


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


def _cache_dir() -> Path:
    return Path(os.environ.get("PRETEXTLAB_CACHE", Path.home() / ".cache" / "pretextlab"))


class ImageFolderSource(DataSource):
    """Any ``root/{train,test}/<class>/*`` tree, decoded once into a uint8 tensor and cached.

    Images are converted to RGB (grayscale, RGBA, CMYK, palette and 16-bit modes included) and
    resized (shorter side) + centre-cropped to ``image_size``. Files that cannot be decoded are
    skipped (logged once each) or stop the run, by ``on_bad_image``.
    """

    name = "imagefolder"

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        train_dir: str = "train",
        test_dir: str = "test",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        on_bad_image: str = "skip",
        cache: bool = True,
    ) -> None:
        from pretextlab.data.imagefolder import BAD_IMAGE_POLICIES, list_image_folder

        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.train_dir, self.test_dir = train_dir, test_dir
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise DataError(f"data.source.on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.cache = cache
        if not self.root.is_dir():
            state = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise DataError(
                f"image folder {self.root} {state}; point data.source.root at a folder holding "
                f"'{train_dir}/<class>/*.jpg' and '{test_dir}/<class>/*.jpg'"
            )
        self._train_files = list_image_folder(self.root / train_dir, what="training")
        self._test_files = list_image_folder(self.root / test_dir, what="test")
        train_classes = sorted(self._train_files)
        test_classes = sorted(self._test_files)
        if train_classes != test_classes:
            only_train = sorted(set(train_classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(train_classes))
            raise DataError(
                f"class folders of {self.root / train_dir} and {self.root / test_dir} differ "
                f"(only in train: {only_train}, only in test: {only_test}); both splits need the same classes"
            )
        self.class_names = tuple(train_classes)
        self.num_classes = len(train_classes)
        self._cache_splits: dict[str, Split] = {}
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
        pixels = self.load("train").images[:10000].float().div(255).permute(1, 0, 2, 3).reshape(3, -1)
        return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())

    def _load(self, split: SplitName) -> Split:
        from pretextlab.data.imagefolder import DECODE_VERSION, decode_files

        key = "test" if split == "test" else "train"
        if key in self._cache_splits:
            return self._cache_splits[key]
        files = self._test_files if key == "test" else self._train_files
        class_index = {name: i for i, name in enumerate(self.class_names)}
        paths = [path for name in self.class_names for path in files[name]]
        labels = [class_index[name] for name in self.class_names for _ in files[name]]
        fingerprint = hashlib.sha256(
            "\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths).encode()
            + f"|{self.image_size}|{self.on_bad_image}|v{DECODE_VERSION}".encode()
        ).hexdigest()[:16]
        cache_file = _cache_dir() / f"imagefolder-{key}-{fingerprint}.pt"
        split_data = self._read_cache(cache_file, len(paths)) if self.cache else None
        if split_data is None:
            images, kept = decode_files(paths, self.image_size, self.on_bad_image)
            split_data = Split(images, torch.tensor(labels, dtype=torch.long)[kept])
            if self.cache:
                self._write_cache(cache_file, split_data, skipped=len(paths) - len(kept))
        self._check_every_class_kept(split_data, key)
        self._cache_splits[key] = split_data
        return split_data

    def _check_every_class_kept(self, split_data: Split, key: str) -> None:
        """A class whose every file was unreadable would silently vanish from the labels."""
        counts = torch.bincount(split_data.labels, minlength=self.num_classes)
        empty = [self.class_names[i] for i in range(self.num_classes) if counts[i] == 0]
        if empty:
            folder = self.root / (self.test_dir if key == "test" else self.train_dir)
            raise DataError(
                f"class folder(s) {empty} under {folder} hold no readable image (every file was skipped "
                "as unreadable); add images or remove the folder(s)"
            )

    def _read_cache(self, cache_file: Path, num_files: int) -> Split | None:
        """The cached decode, or None when absent or unusable (then the files are decoded again)."""
        if not cache_file.exists():
            return None
        try:
            stored = torch.load(cache_file, weights_only=True, map_location="cpu")
            split_data = Split(stored["images"], stored["labels"])
            if split_data.images.shape[1:] != (3, self.image_size, self.image_size):
                raise ValueError(f"cached images have shape {tuple(split_data.images.shape)}")
        except Exception as error:  # a damaged cache costs one decode, never the run
            log.warning("ignoring unusable decode cache %s (%s); decoding the images again", cache_file, error)
            return None
        skipped = int(stored.get("skipped", 0))
        if skipped:
            log.warning("%d of %d file(s) in %s were skipped as unreadable when first decoded "
                        "(decode cache %s)", skipped, num_files, self.root, cache_file)
        return split_data

    @staticmethod
    def _write_cache(cache_file: Path, split_data: Split, skipped: int) -> None:
        from pretextlab.io import atomic_path

        try:
            # A unique temporary name per writer: jobs of a parallel sweep may cache the same split at once.
            with atomic_path(cache_file) as tmp:
                torch.save({"images": split_data.images, "labels": split_data.labels, "skipped": skipped}, tmp)
        except (OSError, RuntimeError) as error:
            # A read-only home or a full disk is no reason to fail a run (torch.save reports a failed
            # write as a RuntimeError, "unexpected pos ..."); the partial file is removed by atomic_path.
            log.warning("could not cache decoded images at %s (%s); the run goes on without the cache "
                        "(set PRETEXTLAB_CACHE to a writable folder with free space)", cache_file,
                        (str(error).strip().splitlines() or [type(error).__name__])[0])


class TorchvisionSource(DataSource):
    """CIFAR-10, CIFAR-100 and STL-10 through torchvision (``download=True`` fetches them).

    STL-10 pretrains on its unlabeled 100k split plus train (labels of the unlabeled part are -1)
    and is probed on train/test.
    """

    _STATS = {
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10, 32),
        "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100, 32),
        "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), 10, 96),
    }

    def __init__(self, name: str, root: str, download: bool = True, image_size: int | None = None) -> None:
        if name not in self._STATS:
            raise DataError(f"unknown torchvision dataset {name!r}; choose one of {sorted(self._STATS)}")
        self.name = name
        self.root = Path(root).expanduser()
        self.download = download
        mean, std, classes, native = self._STATS[name]
        self.mean, self.std, self.num_classes = mean, std, classes
        self.image_size = image_size or native
        self._cache_splits: dict[str, Split] = {}

    def _torchvision_split(self, split: str) -> Split:
        import torchvision

        try:
            if self.name == "stl10":
                ds = torchvision.datasets.STL10(str(self.root), split=split, download=self.download)
                images = torch.from_numpy(ds.data)  # already (N, 3, 96, 96) uint8
                labels = torch.from_numpy(ds.labels.astype(np.int64))
            else:
                cls = torchvision.datasets.CIFAR10 if self.name == "cifar10" else torchvision.datasets.CIFAR100
                ds = cls(str(self.root), train=split == "train", download=self.download)
                images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
                labels = torch.tensor(ds.targets, dtype=torch.long)
        except RuntimeError as error:
            raise DataError(
                f"{self.name} not found under {self.root} ({error}); set data.source.download=true "
                "with internet access, or point data.source.root at an existing copy"
            ) from error
        if images.shape[-1] != self.image_size:
            images = torch.nn.functional.interpolate(
                images.float(), size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            ).round().clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    def _load(self, split: SplitName) -> Split:
        if split in self._cache_splits:
            return self._cache_splits[split]
        if split == "pretrain" and self.name == "stl10":
            unlabeled = self._torchvision_split("unlabeled")
            train = self.load("train")
            result = Split(torch.cat([unlabeled.images, train.images]),
                           torch.cat([torch.full_like(unlabeled.labels, -1), train.labels]))
        elif split == "pretrain":
            result = self.load("train")
        else:
            result = self._torchvision_split(split)
        self._cache_splits[split] = result
        return result
