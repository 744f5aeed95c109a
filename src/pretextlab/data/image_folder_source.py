"""An image folder decoded once into memory (``data=imagefolder``, ``data.source.in_memory=true``)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from pretextlab.data.image_files import DECODE_VERSION, decode_files, list_image_folder
from pretextlab.data.sources import DataError, FileSource, Split, SplitName, cache_dir
from pretextlab.io import atomic_path

log = logging.getLogger(__name__)


class ImageFolderSource(FileSource):
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
        super().__init__(root, image_size, mean, std, on_bad_image)
        self.train_dir, self.test_dir = train_dir, test_dir
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

    def _statistics(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        pixels = self.load("train").images[:10000].float().div(255).permute(1, 0, 2, 3).reshape(3, -1)
        return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())

    def _load(self, split: SplitName) -> Split:
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
        cache_file = cache_dir() / f"imagefolder-{key}-{fingerprint}.pt"
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
