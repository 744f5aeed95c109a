"""CIFAR-10, CIFAR-100 and STL-10 through torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pretextlab.data.sources import DataError, DataSource, Split, SplitName


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
