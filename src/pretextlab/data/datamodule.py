"""One LightningDataModule for every source: uint8 batches in, augmented float batches on device."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from pretextlab.data.sources import DataError, DataSource, Split
from pretextlab.ops.augment import random_crop_with_padding, random_horizontal_flip


class InMemoryDataset(Dataset):
    """A uint8 image tensor and its labels; fetches whole batches with one index op."""

    def __init__(self, split: Split) -> None:
        self.images = split.images
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader calls this with a whole batch of indices: one gather instead of B small copies.
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def _keep_batch(batch: Any) -> Any:
    return batch


class PretextDataModule(L.LightningDataModule):
    """Serves a :class:`DataSource` to pretraining, the online probe and offline evaluation.

    Batches leave the loader as ``(uint8 images, int64 labels)``: cheap to move, and the float
    conversion plus augmentation (random crop with padding, horizontal flip) runs afterwards on
    whatever device the batch landed on, vectorised over the batch. Normalisation is left to the
    task, because some tasks need the raw [0, 1] colours (colourisation converts them to Lab).

    ``batch_size`` is per process: under DDP the global batch is ``batch_size × world size``.
    """

    def __init__(
        self,
        source: DataSource,
        name: str = "data",
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        num_pretrain: int | None = None,
        crop_padding: int = 4,
        horizontal_flip: bool = True,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise DataError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}")
        if num_pretrain is not None and num_pretrain < 1:
            raise DataError(f"data.num_pretrain must be >= 1 or null (all images), got {num_pretrain}")
        self.source = source
        self.name = name
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.num_pretrain = num_pretrain
        self.crop_padding = crop_padding
        self.horizontal_flip = horizontal_flip
        self.pin_memory = pin_memory
        self.seed = seed
        self._splits: dict[str, Split] = {}

    # -- facts the rest of the program needs -------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.source.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.source.std)

    def split(self, name: str) -> Split:
        """The named split (``pretrain``, ``train``, ``test``), loaded once."""
        if name not in self._splits:
            data = self.source.load(name)  # type: ignore[arg-type]
            if name == "pretrain" and self.num_pretrain is not None and self.num_pretrain < len(data):
                # A fixed, seed-dependent subset: the same images for every task of a sweep.
                generator = torch.Generator().manual_seed(self.seed)
                keep = torch.randperm(len(data), generator=generator)[: self.num_pretrain].sort().values
                data = Split(data.images[keep], data.labels[keep])
            self._splits[name] = data
        return self._splits[name]

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.split("pretrain")
        self.split("test")

    def _loader(self, split: Split, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            InMemoryDataset(split),
            batch_size=min(batch_size, len(split)) if drop_last else batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=_keep_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split("pretrain"), self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split("test"), self.eval_batch_size, shuffle=False, drop_last=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Plain (unaugmented, unshuffled) batches of a split, for feature extraction."""
        return self._loader(self.split(split), self.eval_batch_size, shuffle=False, drop_last=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.prepare_images(images, augment=training), labels

    def prepare_images(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` → float [0, 1], augmented when ``augment``; stays on its device."""
        floats = images.float().div_(255.0)
        if augment:
            floats = random_crop_with_padding(floats, self.crop_padding)
            if self.horizontal_flip:
                floats = random_horizontal_flip(floats)
        return floats
