"""One LightningDataModule for every source: uint8 batches in, augmented float batches on device."""

from __future__ import annotations

from typing import Any

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


class IndexDataset(Dataset):
    """Serves only indices: the images already live on the device (``on_device=True``)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.as_tensor(indices, dtype=torch.long)


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffled batches defined globally, each process taking its slice of every global batch.

    With ``world_size`` processes of ``batch_size`` images, global batch ``b`` is
    ``perm[b·G : (b+1)·G]`` with ``G = batch_size × world_size`` and rank ``r`` gets the ``r``-th
    slice of it. So a run on N processes sees exactly the global batches that a 1-process run with
    batch ``G`` sees — which is what makes DDP results comparable to single-process ones. The
    permutation depends on (seed, epoch) only; incomplete global batches are dropped.
    """

    def __init__(self, length: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.length, self.batch_size, self.world_size, self.rank, self.seed = length, batch_size, world_size, rank, seed
        self.epoch = 0
        global_batch = batch_size * world_size
        if length < global_batch:
            raise ValueError(
                f"the training split has {length} images, fewer than one global batch of {global_batch} "
                f"({batch_size} per process x {world_size} processes); lower data.batch_size"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator)
        global_batch = self.batch_size * self.world_size
        for index in range(len(self)):
            start = index * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
        self.epoch += 1  # also advances when Lightning does not call set_epoch


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r+w, …``: every sample once, no padding duplicates."""

    def __init__(self, length: int, world_size: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, length, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class PretextDataModule(L.LightningDataModule):
    """Serves a :class:`DataSource` to pretraining, the online probe and offline evaluation.

    Batches leave the loader as ``(uint8 images, int64 labels)``: cheap to move, and the float
    conversion plus augmentation (random crop with padding, horizontal flip) runs afterwards on
    whatever device the batch landed on, vectorised over the batch. Normalisation is left to the
    task, because some tasks need the raw [0, 1] colours (colourisation converts them to Lab).

    ``batch_size`` is per process: under DDP the global batch is ``batch_size × world size``, and
    every process takes its slice of each global batch (:class:`GlobalBatchSampler`), so N processes
    see the same global batches as one process with N times the batch. Validation batches are
    sharded without padding (:class:`ShardSampler`). Trainers therefore run with
    ``use_distributed_sampler: false``.

    ``on_device=True`` keeps the whole uint8 split on the accelerator (CIFAR-10 is 150 MB): loaders
    then serve index tensors only and batches are gathered on the device, so no worker process or
    host-to-device copy limits the GPU.
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
        on_device: bool = False,
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
        self.on_device = on_device
        self.seed = seed
        self._splits: dict[str, Split] = {}
        self._device_splits: dict[tuple[str, str], Split] = {}

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

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _dataset(self, name: str) -> Dataset:
        data = self.split(name)
        return IndexDataset(len(data)) if self.on_device else InMemoryDataset(data)

    def _loader_options(self) -> dict[str, Any]:
        workers = 0 if self.on_device else self.num_workers
        return {
            "num_workers": workers,
            "pin_memory": self.pin_memory and not self.on_device,
            "persistent_workers": workers > 0,
            "collate_fn": _keep_batch,
        }

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        sampler = GlobalBatchSampler(len(self.split("pretrain")), self.batch_size, world_size, rank, self.seed)
        return DataLoader(self._dataset("pretrain"), batch_sampler=sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        sampler = ShardSampler(len(self.split("test")), world_size, rank)
        return DataLoader(self._dataset("test"), batch_size=self.eval_batch_size, sampler=sampler,
                          **self._loader_options())

    def eval_dataloader(self, split: str, world_size: int = 1, rank: int = 0) -> DataLoader:
        """Plain (unaugmented, unshuffled) uint8 batches of a split, for feature extraction.

        With ``world_size > 1`` the split is sharded ``rank::world_size`` without padding.
        """
        sampler = ShardSampler(len(self.split(split)), world_size, rank)
        return DataLoader(InMemoryDataset(self.split(split)), batch_size=self.eval_batch_size, sampler=sampler,
                          **{**self._loader_options(), "num_workers": 0, "persistent_workers": False})

    def _device_split(self, name: str, device: torch.device) -> Split:
        key = (name, str(device))
        if key not in self._device_splits:
            data = self.split(name)
            self._device_splits[key] = Split(data.images.to(device), data.labels.to(device))
        return self._device_splits[key]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        training = self.trainer is not None and self.trainer.training
        if self.on_device:
            index = batch
            data = self._device_split("pretrain" if training else "test", index.device)
            images, labels = data.images[index], data.labels[index]
        else:
            images, labels = batch
        if labels.ndim > 1:  # multi-label targets (VOC): the online probe takes single labels; give it none
            labels = labels.new_full((len(labels),), -1)
        return self.prepare_images(images, augment=training), labels

    def prepare_images(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` → float [0, 1], augmented when ``augment``; stays on its device."""
        floats = images.float().div_(255.0)
        if augment:
            floats = random_crop_with_padding(floats, self.crop_padding)
            if self.horizontal_flip:
                floats = random_horizontal_flip(floats)
        return floats
