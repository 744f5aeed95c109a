"""Listing and decoding image folders, with a clear word for every kind of bad file.

Whatever the file holds — grayscale, palette, RGBA, CMYK, 16-bit, a photo with an EXIF rotation,
an image smaller than the crop — it comes out as an upright ``(3, S, S)`` uint8 RGB array. Files
that cannot be decoded (zero bytes, truncated, corrupt, not an image) are either skipped, each named
once in the log and counted at the end, or stop the run naming the file (``on_bad_image``).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pretextlab.data.sources import DataError, check_bad_image_policy

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
#: Bumped whenever decoding changes what an image becomes, so stale decode caches are not reused.
DECODE_VERSION = 2

# A sweep builds the same source once per job in one process: name each bad file only once.
_reported_bad_files: set[Path] = set()
_reported_lock = threading.Lock()


def list_image_folder(folder: Path, what: str) -> dict[str, list[Path]]:
    """``{class name: sorted file paths}`` of ``folder/<class>/*``; errors name the fix.

    Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``) are neither classes nor images.
    """
    if not folder.exists():
        raise DataError(
            f"{what} folder {folder} does not exist; an image folder needs "
            f"'{folder.parent}/{{train,test}}/<class>/<image files>'"
        )
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} is a file, not a folder of class folders")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{what} folder {folder} has no class sub-folders; put images in {folder}/<class>/, or "
                        "stream the folder (data.source.in_memory=false) to pretrain on unlabeled images")
    listing: dict[str, list[Path]] = {}
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"class folder {class_dir} is empty; add images or remove the folder")
        listing[class_dir.name] = files
    return listing


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparent areas become white (not black, PIL's default)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit integer and float grayscale: PIL's own conversion clips at 255, which
        # turns most 16-bit images white. Scale by the mode's range instead.
        array = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            peak = 65535.0
        elif img.mode == "F":
            peak = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        else:  # "I": 32-bit ints, usually 16-bit data stored wide
            peak = 65535.0 if array.max(initial=0.0) > 255 else 255.0
        img = Image.fromarray((np.clip(array / peak, 0.0, 1.0) * 255).round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")  # also CMYK, YCbCr, LAB, 1-bit, palette, L


def _resize_center_crop(rgb: Image.Image, image_size: int) -> Image.Image:
    """Shorter side to ``image_size`` (up-sampling small images), then the central square."""
    width, height = rgb.size
    if (width, height) == (image_size, image_size):
        return rgb
    scale = image_size / min(width, height)
    new_size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    rgb = rgb.resize(new_size, Image.Resampling.BICUBIC)
    left = (new_size[0] - image_size) // 2
    top = (new_size[1] - image_size) // 2
    return rgb.crop((left, top, left + image_size, top + image_size))


def decode_image(path: Path, image_size: int) -> np.ndarray | str:
    """The image as upright ``(3, S, S)`` uint8 RGB, or the reason it could not be read."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as img:
            img.load()  # truncated files fail here (PIL's LOAD_TRUNCATED_IMAGES is left False)
            # Phone photos store "rotate me" in EXIF: apply it, or orientation tasks learn noise.
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
        return np.asarray(_resize_center_crop(rgb, image_size), dtype=np.uint8).transpose(2, 0, 1).copy()
    except Image.UnidentifiedImageError:
        return "not an image file (unrecognised format)"
    except Exception as error:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError...)
        return f"{type(error).__name__}: {error}"


def _report_bad_file(path: Path, reason: str) -> None:
    with _reported_lock:
        if path in _reported_bad_files:
            return
        _reported_bad_files.add(path)
    log.warning("skipping unreadable image %s (%s)", path, reason)


def decode_files(paths: list[Path], image_size: int, on_bad_image: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``paths`` into ``(N, 3, S, S)`` uint8; returns the images and the kept indices.

    ``on_bad_image="fail"`` raises :class:`DataError` naming the first unreadable file;
    ``"skip"`` leaves such files out, logging each once and the count at the end.
    """
    check_bad_image_policy(on_bad_image)
    if not paths:
        raise DataError("no image files to decode")
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
        decoded = list(pool.map(lambda p: decode_image(p, image_size), paths))
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    skipped = 0
    for index, (path, result) in enumerate(zip(paths, decoded, strict=True)):
        if isinstance(result, str):
            if on_bad_image == "fail":
                raise DataError(
                    f"cannot read image {path}: {result}; remove or replace the file, or set "
                    "data.source.on_bad_image=skip to leave such files out"
                )
            _report_bad_file(path, result)
            skipped += 1
            continue
        kept.append(index)
        arrays.append(result)
    if skipped:
        log.warning("skipped %d unreadable file(s) of %d in %s (data.source.on_bad_image=skip)", skipped,
                    len(paths), Path(*_common_parts(paths)))
    if not arrays:
        raise DataError(f"none of the {len(paths)} files could be read as images (first: {paths[0]}: {decoded[0]})")
    return torch.from_numpy(np.stack(arrays)), torch.tensor(kept, dtype=torch.long)


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    first = paths[0].parts
    common = len(first) - 1
    for path in paths[1:]:
        parts = path.parts
        while common and parts[:common] != first[:common]:
            common -= 1
    return first[:common] or (".",)
