"""An image folder read during training (``data.source.in_memory=false``): ImageNet-scale data.

Nothing is decoded up front: the source lists the files and says how each use of them is cut.

- pretraining: ``train_crop`` at ``image_size`` (the task's input geometry), flipped;
- pretext validation and the online probe: the same size, centre crop, no flip;
- offline evaluation (linear, kNN): shorter side to ``resize_size``, centre ``eval_image_size``
  (256 → 224, as the field evaluates every row).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from pretextlab.data.folders import FileListing, list_folder
from pretextlab.data.image_folder_source import ImageFolderSource
from pretextlab.data.sources import DataError, DataSource, FileSource
from pretextlab.data.streaming import CropPolicy, StreamingDataset

log = logging.getLogger(__name__)

Use = Literal["pretrain", "val", "train", "test"]

#: Images decoded to estimate mean / std when the config gives none (evenly spaced over train).
STATISTICS_IMAGES = 500


class StreamingFolderSource(FileSource):
    """``root/{train,test}/<class>/*`` (or an unlabeled ``root/train/*``) streamed from disk."""

    name = "imagefolder"
    streaming = True

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        train_dir: str = "train",
        test_dir: str | None = "test",
        pretrain_dir: str | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        on_bad_image: str = "skip",
        train_crop: str = "random_resized",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        resize_size: int = 256,
        eval_image_size: int | None = 224,
        decode_device: str = "cpu",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(root, image_size, mean, std, on_bad_image)
        if not self.root.is_dir():
            state = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise DataError(f"data.source.root={root} {state}; point data.source.root at a copy of the dataset "
                            f"(folders {train_dir}/<class>/ and {test_dir}/<class>/)")
        if decode_device not in ("cpu", "cuda"):
            raise DataError(f"data.source.decode_device={decode_device!r}: choose cpu or cuda")
        self.eval_image_size = int(eval_image_size or image_size)
        self.decode_device = decode_device
        self._statistics_cache: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
        # The geometry is checked now, before any file is read.
        scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.train_crop = CropPolicy(self.image_size, train_crop, resize_size, scale, flip=True)
        self.val_crop = CropPolicy(self.image_size, "resize_center", self._val_resize(train_crop, resize_size))
        self.eval_crop = CropPolicy(self.eval_image_size, "resize_center", resize_size)

        self.train = list_folder(self.root / train_dir, f"data.source.train_dir ({self.root / train_dir})")
        self.pretrain = self.train if pretrain_dir is None else list_folder(
            self.root / pretrain_dir, f"data.source.pretrain_dir ({self.root / pretrain_dir})")
        self.class_names = self.train.class_names
        self.num_classes = len(self.class_names)
        if num_classes is not None and self.num_classes != num_classes:
            raise DataError(f"data.source.root={root}: {self.root / train_dir} holds {self.num_classes} class "
                            f"folders, this dataset has {num_classes}; point data.source.root at a complete copy")
        self.test_dir = test_dir
        self._test: FileListing | None = None

    def _val_resize(self, train_crop: str, resize_size: int) -> int:
        # Validation sees the training size: after the same resize as training where training resizes
        # first, else at evaluation's crop ratio (224 of 256).
        if train_crop != "random_resized":
            return resize_size
        return max(self.image_size, round(self.image_size * resize_size / self.eval_image_size))

    @property
    def labelled(self) -> bool:
        return self.train.labelled

    @property
    def test(self) -> FileListing:
        if self.test_dir is None:
            raise DataError("data.source.test_dir=null: this dataset has no test split; evaluation and pretext "
                            "validation need one (set data.source.test_dir, or eval=none)")
        if self._test is None:
            folder = self.root / self.test_dir
            self._test = list_folder(folder, f"data.source.test_dir ({folder})",
                                     self.class_names if self.labelled else None)
        return self._test

    def listing(self, use: Use) -> FileListing:
        if use == "pretrain":
            return self.pretrain
        return self.train if use == "train" else self.test

    def dataset(self, use: Use, listing: FileListing | None = None, flip: bool = True,
                encoded: bool = False) -> StreamingDataset:
        """The files of ``use`` cut for that use (see the module docstring)."""
        if use == "pretrain":
            crop = CropPolicy(self.image_size, self.train_crop.mode, self.train_crop.resize, self.train_crop.scale,
                              flip=flip)
        else:
            crop = self.val_crop if use == "val" else self.eval_crop
        return StreamingDataset(listing if listing is not None else self.listing(use), crop, self.on_bad_image,
                                encoded=encoded and use == "pretrain")

    # -- normalisation statistics --------------------------------------------------------------
    def _statistics(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        if self._statistics_cache is None:
            listing = self.pretrain
            step = max(1, len(listing) // STATISTICS_IMAGES)
            dataset = self.dataset("val", listing.subset(torch.arange(0, len(listing), step).numpy()))
            total, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
            for index in range(len(dataset)):
                pixels = dataset[index][0].double().div(255).flatten(1)
                total += pixels.sum(1)
                squares += pixels.pow(2).sum(1)
                count += pixels.shape[1]
            mean = total / count
            std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
            log.info("mean/std estimated from %d training images (set data.source.mean/std to skip this)",
                     len(dataset))
            self._statistics_cache = (tuple(mean.tolist()), tuple(std.tolist()))
        assert self._statistics_cache is not None
        return self._statistics_cache

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "streaming": True, "eval_image_size": self.eval_image_size}


#: Keys of ``conf/data/imagefolder.yaml`` that only the streaming source reads.
STREAMING_ONLY = ("pretrain_dir", "train_crop", "crop_scale", "resize_size", "eval_image_size", "decode_device",
                  "num_classes")


def image_folder(in_memory: bool = True, cache: bool = True, **options: Any) -> DataSource:
    """``data=imagefolder``'s source: decoded into memory (default, fastest for small data) or streamed.

    ``in_memory=true`` ignores the streaming-only keys (:data:`STREAMING_ONLY`); ``in_memory=false``
    ignores ``cache`` (nothing is decoded ahead).
    """
    if not in_memory:
        return StreamingFolderSource(**options)
    kept = {key: value for key, value in options.items() if key not in STREAMING_ONLY}
    return ImageFolderSource(cache=cache, **kept)


@dataclass(frozen=True)
class ListingDigest:
    """Stands for a streamed split in a feature-cache fingerprint: a hash of its files and geometry."""

    images: torch.Tensor  # (16,) uint8 digest
    labels: torch.Tensor


def listing_fingerprint(source: StreamingFolderSource) -> dict[str, ListingDigest]:
    """``{"train", "test"}`` → a digest of the file names, labels and evaluation crop (no file is read)."""
    out: dict[str, ListingDigest] = {}
    uses: tuple[Use, ...] = ("train", "test")
    for use in uses:
        listing = source.listing(use)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{listing.folder}|{source.eval_crop}|".encode())
        digest.update(listing.paths.tobytes())
        out[use] = ListingDigest(torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8),
                                 torch.from_numpy(listing.labels))
    return out
