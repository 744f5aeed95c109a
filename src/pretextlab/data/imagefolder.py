"""Listing and decoding image folders, with a clear word for every kind of bad file."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from pretextlab.data.sources import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_image_folder(folder: Path, what: str) -> dict[str, list[Path]]:
    """``{class name: sorted image paths}`` of ``folder/<class>/*``; errors name the fix."""
    if not folder.is_dir():
        raise DataError(
            f"{what} folder {folder} does not exist; an image folder needs "
            f"'{folder.parent}/{{train,test}}/<class>/<image files>'"
        )
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{what} folder {folder} has no class sub-folders; put images in {folder}/<class>/")
    listing: dict[str, list[Path]] = {}
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"class folder {class_dir} is empty; add images or remove the folder")
        listing[class_dir.name] = files
    return listing


def _decode_one(path: Path, image_size: int) -> np.ndarray | str:
    """The image as (3, S, S) uint8, or the reason it could not be read."""
    if path.stat().st_size == 0:
        return "zero-byte file"
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is corrupt, not "mostly fine"
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit grayscale: scale to 8 bits before RGB conversion (PIL would clip).
                array = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if array.max() > 255 else 255.0
                img = Image.fromarray((array / peak * 255).round().astype(np.uint8), mode="L")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            rgb = img.convert("RGB")
    except Exception as error:  # PIL raises many types for bad files
        return f"{type(error).__name__}: {error}"
    width, height = rgb.size
    if (width, height) != (image_size, image_size):
        scale = image_size / min(width, height)
        new_size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.BICUBIC)
        left = (new_size[0] - image_size) // 2
        top = (new_size[1] - image_size) // 2
        rgb = rgb.crop((left, top, left + image_size, top + image_size))
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode_files(paths: list[Path], image_size: int, on_bad_image: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``paths`` into ``(N, 3, S, S)`` uint8; returns the images and the kept indices."""
    if not paths:
        raise DataError("no image files to decode")
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
        decoded = list(pool.map(lambda p: _decode_one(p, image_size), paths))
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
            log.warning("skipping unreadable image %s (%s)", path, result)
            skipped += 1
            continue
        kept.append(index)
        arrays.append(result)
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", skipped, len(paths))
    if not arrays:
        raise DataError(f"none of the {len(paths)} image files could be read (first: {paths[0]})")
    return torch.from_numpy(np.stack(arrays)), torch.tensor(kept, dtype=torch.long)
