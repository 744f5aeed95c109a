"""PASCAL VOC 2007 classification: 20 classes, multi-label, in torchvision's ``VOCDetection`` layout.

``root`` holds ``VOCdevkit/VOC2007/`` with ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
``ImageSets/Main/{trainval,test}.txt`` (what torchvision's ``VOCDetection(root, year="2007",
download=True)`` unpacks; ``download=True`` here asks torchvision to fetch it).

Targets come from the annotations, one entry per class, in the benchmark's three-valued form
(the classification lists ``ImageSets/Main/<class>_<split>.txt`` of the devkit hold the same
facts as 1 / -1 / 0):

- ``1``: the image holds at least one instance of the class not marked ``difficult``;
- ``0``: the image holds no instance of the class;
- ``-1``: every instance of the class in the image is marked ``difficult``: the image is left out
  of that class (training and scoring), as in the VOC devkit and Goyal et al. 2019 / VISSL.

So ``train`` and ``test`` labels are ``(N, 20)`` int64. The ``pretrain`` split is trainval with
``(N,)`` labels of ``-1`` (unlabeled): pretraining never sees the targets.

Images are decoded once (EXIF-upright RGB) and resized to ``image_size`` × ``image_size``: by
default the whole image is squashed to the square (``resize="squash"``, what VISSL's VOC07
benchmark does with ``Resize((224, 224))``: a multi-label image keeps every object), or
``resize="center_crop"`` takes the central square after resizing the shorter side. Decoded splits
are cached under ``~/.cache/pretextlab`` (``PRETEXTLAB_CACHE``) like image folders.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pretextlab.data.image_files import _resize_center_crop, _to_rgb
from pretextlab.data.sources import DataError, FileSource, Split, SplitName, cache_dir

log = logging.getLogger(__name__)

#: The 20 VOC classes in the devkit's (alphabetical) order: target column ``i`` is ``VOC_CLASSES[i]``.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1
RESIZE_MODES = ("squash", "center_crop")
#: Bumped whenever decoding or target parsing changes, so stale caches are not reused.
VOC_CACHE_VERSION = 1
#: ImageNet statistics (what VISSL normalises VOC07 with); a backbone's own statistics win in evaluation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_annotation(path: Path) -> dict[str, int]:
    """``{class: 1 | -1}`` for the classes present in one VOC annotation file (absent classes: 0).

    A class is 1 when at least one of its objects is not ``difficult``, -1 when all are.
    Unknown class names are an error: a typo would silently drop objects.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise DataError(f"cannot read VOC annotation {path}: {error}") from error
    found: dict[str, int] = {}
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DataError(f"{path}: object class {name!r} is not one of the 20 VOC classes {list(VOC_CLASSES)}")
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        if not difficult:
            found[name] = POSITIVE
        elif found.get(name) != POSITIVE:
            found[name] = IGNORED
    return found


def targets_from_annotations(found: dict[str, int]) -> list[int]:
    return [found.get(name, NEGATIVE) for name in VOC_CLASSES]


def _decode(path: Path, image_size: int, resize: str) -> np.ndarray | str:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
        if resize == "squash":
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
        else:
            rgb = _resize_center_crop(rgb, image_size)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()
    except Exception as error:  # PIL raises many types for bad files
        return f"{type(error).__name__}: {error}"


class VOC2007Source(FileSource):
    """VOC 2007 trainval (``train``, ``pretrain``) and test (``test``), multi-label targets."""

    name = "voc2007"
    #: Labels are ``(N, num_classes)`` in {1, 0, -1}: only multi-label protocols can use them.
    multilabel = True

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        download: bool = False,
        train_split: str = "trainval",
        test_split: str = "test",
        resize: str = "squash",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        on_bad_image: str = "skip",
        cache: bool = True,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise DataError(f"data.source.resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
        super().__init__(root, image_size, mean, std, on_bad_image)
        self.download = download
        self.train_split, self.test_split = train_split, test_split
        self.resize, self.cache = resize, cache
        self.class_names = VOC_CLASSES
        self.num_classes = len(VOC_CLASSES)
        self.voc_root = self.root / "VOCdevkit" / "VOC2007"
        if download:
            self._download()
        if not self.voc_root.is_dir():
            raise DataError(
                f"no VOC 2007 tree at {self.voc_root}; point data.source.root at the folder holding "
                "VOCdevkit/VOC2007 (Annotations, JPEGImages, ImageSets/Main), or set data.source.download=true "
                "with internet access"
            )
        self._splits: dict[str, Split] = {}
        self.skipped: dict[str, int] = {}

    def _statistics(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """ImageNet's statistics: the backbones evaluated on VOC were normalised with them."""
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)  # type: ignore[return-value]

    def _download(self) -> None:
        import torchvision

        for image_set in (self.train_split, self.test_split):
            if (self.voc_root / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
                continue
            try:
                torchvision.datasets.VOCDetection(str(self.root), year="2007", image_set=image_set, download=True)
            except Exception as error:
                raise DataError(f"downloading VOC 2007 {image_set} into {self.root} failed: {error}") from error

    def image_ids(self, split: str) -> list[str]:
        listing = self.voc_root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"{listing} does not exist; a VOC 2007 tree lists its '{split}' images there "
                            "(one image id per line)")
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"{listing} lists no image")
        return ids

    def targets(self, split: str) -> tuple[list[str], torch.Tensor]:
        """Image ids of ``split`` and their ``(N, 20)`` targets in {1, 0, -1}, from the annotations."""
        ids = self.image_ids(split)
        rows = []
        for image_id in ids:
            annotation = self.voc_root / "Annotations" / f"{image_id}.xml"
            if not annotation.is_file():
                raise DataError(f"image {image_id!r} of {split}.txt has no annotation {annotation}")
            rows.append(targets_from_annotations(parse_annotation(annotation)))
        return ids, torch.tensor(rows, dtype=torch.long)

    def _load(self, split: SplitName) -> Split:
        if split == "pretrain":
            train = self.load("train")
            return Split(train.images, torch.full((len(train),), -1, dtype=torch.long))
        image_set = self.test_split if split == "test" else self.train_split
        if image_set not in self._splits:
            self._splits[image_set] = self._decode_split(image_set)
        return self._splits[image_set]

    def _decode_split(self, image_set: str) -> Split:
        ids, targets = self.targets(image_set)
        paths = [self.voc_root / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
        digest = hashlib.sha256()
        for path, row in zip(paths, targets.tolist(), strict=True):
            stat = path.stat() if path.exists() else None
            digest.update(f"{path}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}:{row}\n".encode())
        digest.update(f"|{self.image_size}|{self.resize}|{self.on_bad_image}|v{VOC_CACHE_VERSION}".encode())
        cache_file = cache_dir() / f"voc2007-{image_set}-{digest.hexdigest()[:16]}.pt"
        if self.cache and cache_file.exists():
            try:
                stored = torch.load(cache_file, map_location="cpu", weights_only=True)
                self.skipped[image_set] = int(stored.get("skipped", 0))
                return Split(stored["images"], stored["labels"])
            except Exception as error:  # a damaged cache costs one decode, never the run
                log.warning("ignoring unusable VOC decode cache %s (%s)", cache_file, error)
        with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
            decoded = list(pool.map(lambda p: _decode(p, self.image_size, self.resize), paths))
        kept = [i for i, result in enumerate(decoded) if not isinstance(result, str)]
        bad = [(paths[i], result) for i, result in enumerate(decoded) if isinstance(result, str)]
        if bad and self.on_bad_image == "fail":
            raise DataError(f"cannot read image {bad[0][0]}: {bad[0][1]}; set data.source.on_bad_image=skip "
                            "to leave such files out")
        for path, reason in bad[:10]:
            log.warning("skipping unreadable VOC image %s (%s)", path, reason)
        if bad:
            log.warning("skipped %d unreadable image(s) of %d in VOC %s", len(bad), len(paths), image_set)
        if not kept:
            raise DataError(f"none of the {len(paths)} images of VOC {image_set} could be read "
                            f"(first: {paths[0]}: {decoded[0]})")
        images = torch.from_numpy(np.stack([decoded[i] for i in kept]))
        split = Split(images, targets[torch.tensor(kept, dtype=torch.long)])
        self.skipped[image_set] = len(bad)
        if self.cache:
            from pretextlab.io import atomic_path

            try:
                with atomic_path(cache_file) as tmp:
                    torch.save({"images": split.images, "labels": split.labels, "skipped": len(bad)}, tmp)
            except OSError as error:  # a read-only home is no reason to fail a run
                log.warning("could not cache decoded VOC images at %s: %s", cache_file, error)
        return split

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "multilabel": True, "resize": self.resize}
