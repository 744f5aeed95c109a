"""One LightningDataModule for every source: uint8 batches in, augmented float batches on device."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pretextlab.data.sources import DataError, DataSource, Split
from pretextlab.ops.augment import random_crop_with_padding, random_horizontal_flip

log = logging.getLogger(__name__)


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

    ``position(epoch)`` (given by the DataModule) returns ``(epoch, batches already trained)`` for
    an iteration that starts now: the trainer's epoch (Lightning 2.6 calls ``set_epoch`` on samplers,
    never on a batch sampler, so the sampler's own count restarts at 0 in a resumed run) and, after
    a resume from a mid-epoch checkpoint, how many of its batches the checkpoint had trained, which
    the iteration then skips: the resumed run sees exactly the uninterrupted run's batches. It is
    asked at every start (a loader may be iterated more than once before the first step).
    """

    def __init__(self, length: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 position: Callable[[int], tuple[int, int]] | None = None) -> None:
        self.length, self.batch_size, self.world_size, self.rank, self.seed = length, batch_size, world_size, rank, seed
        self.position = position
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
        skip = 0
        if self.position is not None:
            self.epoch, skip = self.position(self.epoch)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator)
        global_batch = self.batch_size * self.world_size
        for index in range(skip, len(self)):
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

    A streaming source (``data.source.in_memory=false``) holds no split in memory: loader workers
    read, decode and augment the files (:mod:`pretextlab.data.streaming`), so training batches
    arrive augmented and ``crop_padding`` is not used; ``horizontal_flip`` applies in the workers.

    The DataModule's checkpoint state is how many batches of which epoch the training loop took:
    a run resumed from a mid-epoch checkpoint continues with exactly the remaining batches.
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
        self.streaming = bool(getattr(source, "streaming", False))
        self._gpu_decode = False
        self._train_crop: Any = None  # the pretraining crop, for batches decoded on the GPU
        # (epoch, batches of it taken by the training loop); restored from a checkpoint until used.
        self._taken: tuple[int, int] = (0, 0)
        self._restored: tuple[int, int] | None = None

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

    @property
    def pretrain_images(self) -> int | None:
        """Images pretraining really uses (``num_pretrain`` capped by the split); None until the split is loaded."""
        data = self._splits.get("pretrain")
        return None if data is None else len(data)

    def split(self, name: str) -> Split:
        """The named split (``pretrain``, ``train``, ``test``), loaded once."""
        if self.streaming:
            raise DataError(
                f"the {name} split is streamed from disk (data.source.in_memory=false), never held in memory; "
                "fine-tuning (eval=finetune, eval=standard) needs data.source.in_memory=true; "
                "linear and kNN probes (eval=linear_knn) stream"
            )
        if name not in self._splits:
            data = self.source.load(name)  # type: ignore[arg-type]
            if name == "pretrain" and self.num_pretrain is not None and self.num_pretrain < len(data):
                # A fixed, seed-dependent subset: the same images for every task of a sweep.
                generator = torch.Generator().manual_seed(self.seed)
                keep = torch.randperm(len(data), generator=generator)[: self.num_pretrain].sort().values
                data = Split(data.images[keep], data.labels[keep])
            elif name == "pretrain" and self.num_pretrain is not None and self.num_pretrain > len(data):
                log.warning("data.num_pretrain=%d is more than the %d images of the pretraining split: pretraining "
                            "on all %d (results.json records pretrain_images=%d)", self.num_pretrain, len(data),
                            len(data), len(data))
            self._splits[name] = data
        return self._splits[name]

    def sample_images(self, name: str, count: int) -> torch.Tensor:
        """``count`` images of a split evenly spaced over it (all when it has fewer), uint8 ``(N, 3, H, W)``,
        unaugmented: what a task fits statistics on before training (colorization's colour prior).

        In memory they are picked from the loaded split; streamed, only those files are read, cut
        at the evaluation geometry (a centre crop), by the configured loader workers.
        """
        if count < 1:
            raise ValueError(f"sample_images needs count >= 1, got {count}")
        if not self.streaming:
            images = self.split(name).images
            return images[torch.linspace(0, len(images) - 1, min(count, len(images))).round().long()]
        listing = self._listing(name)
        picks = torch.linspace(0, len(listing) - 1, min(count, len(listing))).round().long()
        dataset = self.source.dataset("train", listing.subset(picks.numpy()))  # type: ignore[attr-defined]
        options = {**self._loader_options(), "persistent_workers": False, "pin_memory": False}
        loader = DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **options)
        return torch.cat([images for images, _ in loader])

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.streaming:
            self.split("pretrain")
            self.split("test")

    def fingerprint_splits(self) -> dict[str, Any]:
        """What extracted features depend on besides the weights: the split tensors, or the file listing."""
        if not self.streaming:
            return {name: self.split(name) for name in ("train", "test")}
        from pretextlab.data.streaming_source import listing_fingerprint

        return listing_fingerprint(self.source)  # type: ignore[arg-type]

    # -- exact mid-epoch resume ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where training continues: (epoch, batches of it already trained)."""
        epoch, done = self._taken
        if self.trainer is not None and done >= self.trainer.num_training_batches:
            epoch, done = epoch + 1, 0  # saved at the end of an epoch (also one cut by limit_train_batches)
        return {"train_epoch": epoch, "train_batches": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = (int(state_dict.get("train_epoch", 0)), int(state_dict.get("train_batches", 0)))

    def _batches_done(self, epoch: int) -> int:
        restored = self._restored
        return restored[1] if restored is not None and restored[0] == epoch else 0

    def _position(self, sampler_epoch: int) -> tuple[int, int]:
        """The training sampler's (epoch, batches to skip) for an iteration starting now.

        Until the first batch after a resume, the checkpoint's position: Lightning starts iterating
        (to count the steps for the lr schedule) before it restores its own epoch counter.
        """
        if self._restored is not None:
            return self._restored
        epoch = int(getattr(self.trainer, "current_epoch", sampler_epoch)) if self.trainer is not None else sampler_epoch
        return epoch, 0

    def _count_training_batch(self) -> None:
        epoch = int(self.trainer.current_epoch) if self.trainer is not None else 0
        if self._restored is not None:
            self._taken, self._restored = (epoch, self._batches_done(epoch)), None
        done = self._taken[1] if self._taken[0] == epoch else 0
        self._taken = (epoch, done + 1)

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
        options = {
            "num_workers": workers,
            "pin_memory": self.pin_memory and not self.on_device,
            "persistent_workers": workers > 0,
            "collate_fn": _keep_batch,
        }
        if self.streaming:
            from pretextlab.data.streaming import collate_images

            options["collate_fn"] = collate_images
        return options

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        dataset = self._streamed("pretrain") if self.streaming else self._dataset("pretrain")
        sampler = GlobalBatchSampler(len(dataset), self.batch_size, world_size, rank,  # type: ignore[arg-type]
                                     self.seed, position=self._position)
        return DataLoader(dataset, batch_sampler=sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        dataset = self._streamed("val") if self.streaming else self._dataset("test")
        sampler = ShardSampler(len(dataset), world_size, rank)  # type: ignore[arg-type]
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, **self._loader_options())

    def _streamed(self, use: str) -> Dataset:
        from pretextlab.data.streaming import gpu_decode_available

        if use == "pretrain":
            device = self.trainer.strategy.root_device if self.trainer is not None else None
            self._gpu_decode = gpu_decode_available(self.source.decode_device == "cuda", device)  # type: ignore[attr-defined]
        dataset = self.source.dataset(use, self._listing(use), flip=self.horizontal_flip,  # type: ignore[attr-defined]
                                      encoded=self._gpu_decode)
        if use == "pretrain":
            self._train_crop = dataset.crop
        return dataset

    def _listing(self, use: str) -> Any:
        """The files a streamed split reads: for pretraining, the ``num_pretrain`` subset."""
        listing = self.source.listing(use)  # type: ignore[attr-defined]
        if use == "pretrain" and self.num_pretrain is not None and self.num_pretrain < len(listing):
            # The same fixed, seed-dependent subset rule as the in-memory splits.
            generator = torch.Generator().manual_seed(self.seed)
            listing = listing.subset(torch.randperm(len(listing), generator=generator)[: self.num_pretrain]
                                     .sort().values.numpy())
        return listing

    def eval_dataloader(self, split: str, world_size: int = 1, rank: int = 0) -> DataLoader:
        """Plain (unaugmented, unshuffled) uint8 batches of a split, for feature extraction.

        With ``world_size > 1`` the split is sharded ``rank::world_size`` without padding. A
        streamed split is cut at the evaluation geometry (256 → 224) by the loader's workers.
        """
        if self.streaming:
            dataset = self._streamed(split)
            return DataLoader(dataset, batch_size=self.eval_batch_size,
                              sampler=ShardSampler(len(dataset), world_size, rank),  # type: ignore[arg-type]
                              **{**self._loader_options(), "persistent_workers": False})
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
        if training:
            self._count_training_batch()
        if self.on_device:
            index = batch
            data = self._device_split("pretrain" if training else "test", index.device)
            images, labels = data.images[index], data.labels[index]
        else:
            images, labels = batch
        if isinstance(images, list):  # still-encoded JPEGs: the GPU decode path
            from pretextlab.data.streaming import decode_on_device

            images = decode_on_device(images, self._train_crop, labels.device)
        if labels.ndim > 1:  # multi-label targets (VOC): the online probe takes single labels; give it none
            labels = labels.new_full((len(labels),), -1)
        return self.prepare_images(images, augment=training, padding_mode=self._task_padding_mode()), labels

    def _task_padding_mode(self) -> str:
        """The attached task's ``crop_padding_mode``: tile and patch tasks must not see zero borders."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return str(getattr(module, "crop_padding_mode", "constant"))

    def prepare_images(self, images: torch.Tensor, augment: bool, padding_mode: str = "constant") -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` → float [0, 1], augmented when ``augment``; stays on its device.

        Streamed images were augmented by the loader workers already: only converted here.
        ``padding_mode`` is how the random crop pads (``ops.augment.PADDING_MODES``).
        """
        floats = images.float().div_(255.0)
        if augment and not self.streaming:
            floats = random_crop_with_padding(floats, self.crop_padding, mode=padding_mode)
            if self.horizontal_flip:
                floats = random_horizontal_flip(floats)
        return floats
