"""Compact listings of image folders, labelled (``<class>/<file>``) or unlabeled (files directly).

A listing of ImageNet holds 1.28 M paths. Kept as Python strings they would cost hundreds of MB and,
touched by every DataLoader worker, be copied page by page into each worker (reference counts write
to the objects); kept as one numpy byte array they are shared by all workers for free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretextlab.data.image_files import IMAGE_SUFFIXES
from pretextlab.data.sources import DataError


@dataclass(frozen=True)
class FileListing:
    """Files of one split: paths relative to ``folder`` and labels (-1 where unlabeled)."""

    folder: Path
    paths: np.ndarray  # (N,) bytes, relative to folder
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]  # () for an unlabeled folder

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    def path(self, index: int) -> str:
        return os.path.join(self.folder, os.fsdecode(self.paths[index]))

    def subset(self, keep: np.ndarray) -> FileListing:
        return FileListing(self.folder, self.paths[keep], self.labels[keep], self.class_names)


def _packed(names: list[str]) -> np.ndarray:
    # os.fsencode keeps any file name (non-ASCII, undecodable bytes) round-trip exact.
    return np.array([os.fsencode(name) for name in names], dtype=np.bytes_)


def _visible(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".")


def _image_files(folder: Path) -> list[str]:
    """Names of the image files directly in ``folder``, sorted (hidden files and other kinds left out)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if _visible(e) and e.is_file()
                      and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)


def is_labelled(folder: Path) -> bool:
    """True when ``folder`` holds class sub-folders (an unlabeled folder holds image files directly)."""
    with os.scandir(folder) as entries:
        return any(_visible(e) and e.is_dir() for e in entries)


def list_folder(folder: Path, key: str, classes: tuple[str, ...] | None = None) -> FileListing:
    """List ``folder``: ``<class>/<image>`` (labelled) or ``<image>`` (unlabeled); errors name ``key``.

    ``classes`` fixes the class order (the training split's) for a labelled test split.
    """
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{key}: {folder} {state}; point {key} at a copy of the data (folder layout: "
                        f"<class>/<image files>, or image files directly for unlabeled pretraining)")
    if not is_labelled(folder):
        names = _image_files(folder)
        if not names:
            raise DataError(f"{key}: {folder} holds neither class sub-folders nor image files "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        return FileListing(folder, _packed(names), np.full(len(names), -1, dtype=np.int64), ())
    with os.scandir(folder) as entries:
        found = sorted(e.name for e in entries if _visible(e) and e.is_dir())
    if classes is not None and found != list(classes):
        only_here, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise DataError(f"{key}: class folders of {folder} differ from the training split's "
                        f"(only here: {only_here[:5]}, missing: {missing[:5]}); both splits need the same classes")
    paths: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(found):
        files = _image_files(folder / name)
        if not files:
            raise DataError(f"{key}: class folder {folder / name} holds no image files; add images or remove it")
        paths += [f"{name}/{file}" for file in files]
        labels += [index] * len(files)
    return FileListing(folder, _packed(paths), np.array(labels, dtype=np.int64), tuple(found))
