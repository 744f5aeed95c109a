"""Image folders streamed from disk: decoding and augmentation in DataLoader workers.

Why torchvision rather than litdata or webdataset: both would be a new dependency, and both first
convert a dataset into their own shard format (a second copy of ImageNet, ~150 GB, rewritten
whenever the folder changes). Reading the folder in place with torchvision's libjpeg-turbo decoder
and its uint8 tensor kernels serves a training step as fast as the field's ImageFolder loaders
(benchmarks/README.md, "Streaming loader"), keeps random access by index — which is what makes
:class:`~pretextlab.data.datamodule.GlobalBatchSampler`'s DDP sharding and an exact mid-epoch
resume possible — and needs nothing that is not installed already.

One image leaves a worker as upright ``(3, S, S)`` uint8 RGB: decoded (EXIF rotation applied;
PIL as the fallback for what torchvision's decoders refuse), then cropped and resized in one
antialiased step (:class:`CropPolicy`), flipped for pretraining.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as F

from pretextlab.data.folders import FileListing
from pretextlab.data.image_files import _report_bad_file, _to_rgb
from pretextlab.data.sources import DataError, check_bad_image_policy

log = logging.getLogger(__name__)

#: Crop modes: ``random_resized`` (a random area and aspect ratio, resized to the output size: the
#: field's pretraining crop), ``resize_random`` (shorter side to ``resize``, then a random square:
#: jigsaw's 225 crop of a 256 resize), ``resize_center`` (shorter side to ``resize``, the central
#: square: evaluation's 256 → 224).
CROP_MODES = ("random_resized", "resize_random", "resize_center")
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class CropPolicy:
    """Where to cut an image and at which size; the cut and the resize are one antialiased step.

    Cropping in the source's coordinates before resizing computes only the output pixels: the same
    region as "resize the whole image, then crop", without resizing what the crop throws away.
    """

    size: int
    mode: str = "random_resized"
    resize: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise DataError(f"data.source.train_crop={self.mode!r} is unknown; choose one of {list(CROP_MODES)}")
        if self.mode != "random_resized" and (self.resize is None or self.resize < self.size):
            raise DataError(f"crop mode {self.mode} cuts a {self.size} px square from an image resized to "
                            f"data.source.resize_size={self.resize}: it must be >= {self.size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise DataError(f"data.source.crop_scale={list(self.scale)} must be 0 < low <= high <= 1")

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the source image that becomes the output square."""
        if self.mode == "random_resized":
            return _random_resized_region(height, width, self.scale, self.ratio)
        assert self.resize is not None
        # The output square is size/resize of the shorter side, wherever the resize would put it.
        side = max(1, round(min(height, width) * self.size / self.resize))
        if self.mode == "resize_center":
            return (height - side) // 2, (width - side) // 2, side, side
        return random.randint(0, height - side), random.randint(0, width - side), side, side

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.region(int(image.shape[-2]), int(image.shape[-1]))
        out = F.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        if self.flip and random.random() < 0.5:
            out = F.horizontal_flip(out)
        return out


def _random_resized_region(height: int, width: int, scale: tuple[float, float],
                           ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    # Inception-style sampling (torchvision's RandomResizedCrop.get_params), on Python's RNG: a
    # worker seeds it per process (Lightning's worker_init_fn), and no tensor op is needed for it.
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    # Fallback: the central crop at the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _as_uint8_rgb(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint16:  # 16-bit PNGs: keep the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()


def _decode_with_pil(data: bytes) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = _to_rgb(ImageOps.exif_transpose(img))
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())


def decode_file(path: str) -> torch.Tensor | str:
    """The file as upright ``(3, H, W)`` uint8 RGB, or the reason it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    if not data:
        return "zero-byte file"
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return _as_uint8_rgb(decode_image(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True))
    except Exception:  # formats or variants torchvision refuses (BMP, TIFF, palette GIF frames...): ask PIL
        pass
    try:
        return _decode_with_pil(data)
    except Exception as error:  # PIL raises many types for bad files
        return f"{type(error).__name__}: {error}"


class StreamingDataset(Dataset):
    """Files of a :class:`FileListing`, decoded and cropped on access: ``(uint8 image, label)``.

    An unreadable file is skipped (named once in the log) by serving the next readable one, so a
    batch keeps its size, or stops the run naming the file (``on_bad_image="fail"``).
    ``encoded=True`` (the GPU decode path) hands JPEG files over still encoded, as 1-D uint8 byte
    tensors, for a batched nvJPEG decode on the device; other formats are decoded here.
    """

    def __init__(self, listing: FileListing, crop: CropPolicy, on_bad_image: str = "skip",
                 encoded: bool = False) -> None:
        self.listing, self.crop, self.encoded = listing, crop, encoded
        self.on_bad_image = check_bad_image_policy(on_bad_image)

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(min(len(self), 100)):
            position = (index + attempt) % len(self)
            path = self.listing.path(position)
            item = self._encoded(path) if self.encoded else None
            if item is None:
                decoded = decode_file(path)
                if isinstance(decoded, str):
                    self._bad(path, decoded)
                    continue
                item = self.crop(decoded)
            return item, int(self.listing.labels[position])
        raise DataError(f"100 files in a row from {self.listing.path(index)} on could not be read; "
                        "check data.source.root")

    def _encoded(self, path: str) -> torch.Tensor | None:
        with open(path, "rb") as handle:
            data = handle.read()
        if not data.startswith(JPEG_MAGIC) or _exif_rotated(data):
            return None  # decoded here: nvJPEG ignores EXIF orientation
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def _bad(self, path: str, reason: str) -> None:
        if self.on_bad_image == "fail":
            raise DataError(f"cannot read image {path}: {reason}; remove or replace the file, or set "
                            "data.source.on_bad_image=skip to leave such files out")
        _report_bad_file(Path(path), reason)


def _exif_rotated(data: bytes) -> bool:
    """Whether a JPEG asks to be rotated or mirrored (EXIF orientation other than 1); reads the header only."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.getexif().get(0x0112, 1)) != 1
    except Exception:  # unreadable here: the CPU path decides what to do with the file
        return True


def collate_images(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
    """Stack same-size images into ``(B, 3, S, S)``; encoded (ragged) items stay a list."""
    images = [image for image, _ in items]
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    if all(image.ndim == 3 for image in images):
        return torch.stack(images), labels
    return images, labels


def decode_on_device(images: list[torch.Tensor], crop: CropPolicy, device: torch.device) -> torch.Tensor:
    """A batch of still-encoded JPEGs (1-D) and already-cropped images (3-D) → ``(B, 3, S, S)`` uint8.

    The JPEGs are decoded in one batched nvJPEG call on ``device``, then cropped there one by one
    (their sizes differ). Images the worker decoded already arrive cropped.
    """
    encoded = [i for i, image in enumerate(images) if image.ndim == 1]
    out: list[torch.Tensor | None] = [image if image.ndim == 3 else None for image in images]
    if encoded:
        decoded = decode_jpeg([images[i].cpu() for i in encoded], mode=ImageReadMode.RGB, device=device,
                              apply_exif_orientation=True)
        for i, image in zip(encoded, decoded, strict=True):
            out[i] = crop(image)
    return torch.stack([image.to(device) for image in out if image is not None])


def gpu_decode_available(requested: bool, device: Any) -> bool:
    """Whether the nvJPEG path can run; warns once when it was asked for and cannot."""
    if not requested:
        return False
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        return True
    log.warning("data.source.decode_device=cuda but no CUDA device runs this job: decoding JPEGs on the "
                "CPU in the loader workers instead")
    return False
