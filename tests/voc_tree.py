"""A tiny PASCAL VOC 2007 tree written by the tests (torchvision's VOCDetection layout), with known targets.

Every class appears in two to five trainval images and in two test images; each image holds two
or three classes, each painted as a block of its own colour on grey, so that features can tell them
apart. Three images carry "difficult" objects:

- trainval ``000000``: a difficult ``cat`` only (target -1 for cat: left out of that class);
- trainval ``000001``: a difficult ``dog`` and a normal ``dog`` (target 1: one plain instance suffices);
- test ``100003``: a difficult ``bird`` only (target -1: not scored for bird).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretextlab.data.voc import VOC_CLASSES

TRAINVAL = 30
TEST = 20
#: One colour per class, far apart in RGB.
PALETTE = [tuple(int(v) for v in np.random.default_rng(c).integers(0, 256, 3)) for c in range(20)]


def trainval_classes(i: int) -> list[int]:
    classes = [i % 20, (i + 3) % 20]
    if i % 3 == 0:
        classes.append((i + 11) % 20)
    return sorted(set(classes))


def test_classes(j: int) -> list[int]:
    return sorted({j % 20, (j + 5) % 20})


#: (image id, class, difficult) of the extra objects listed in the module docstring.
EXTRA_OBJECTS = [("000000", "cat", True), ("000001", "dog", True), ("000001", "dog", False),
                 ("100003", "bird", True)]


def _annotation(image_id: str, objects: list[tuple[str, bool]]) -> str:
    parts = [f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>",
             "<size><width>48</width><height>40</height><depth>3</depth></size>"]
    for name, difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{int(difficult)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                     "<xmax>20</xmax><ymax>20</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts)


def _image(classes: list[int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.full((40, 48, 3), 128, dtype=np.uint8)
    for slot, c in enumerate(classes):
        top, left = 2 + 12 * slot, int(rng.integers(0, 24))
        pixels[top : top + 12, left : left + 22] = PALETTE[c]
    return Image.fromarray(pixels)


def write_voc_tree(root: Path) -> Path:
    """Write the tree under ``root/VOCdevkit/VOC2007``; returns ``root`` (what data.source.root takes)."""
    voc = Path(root) / "VOCdevkit" / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    splits = {"trainval": [(f"{i:06d}", trainval_classes(i)) for i in range(TRAINVAL)],
              "test": [(f"{100000 + j:06d}", test_classes(j)) for j in range(TEST)]}
    for split, images in splits.items():
        for index, (image_id, classes) in enumerate(images):
            objects = [(VOC_CLASSES[c], False) for c in classes]
            objects += [(name, difficult) for extra_id, name, difficult in EXTRA_OBJECTS if extra_id == image_id]
            (voc / "Annotations" / f"{image_id}.xml").write_text(_annotation(image_id, objects))
            _image(classes, seed=index + (1000 if split == "test" else 0)).save(voc / "JPEGImages" / f"{image_id}.jpg",
                                                                               quality=95)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i, _ in images))
    return Path(root)


def expected_targets(split: str) -> np.ndarray:
    """The ``(N, 20)`` targets in {1, 0, -1} the annotations above mean."""
    count, classes_of, first = (TRAINVAL, trainval_classes, 0) if split == "trainval" else (TEST, test_classes, 100000)
    targets = np.zeros((count, 20), dtype=np.int64)
    for index in range(count):
        targets[index, classes_of(index)] = 1
        image_id = f"{first + index:06d}"
        for extra_id, name, difficult in EXTRA_OBJECTS:
            c = VOC_CLASSES.index(name)
            if extra_id == image_id:
                if not difficult:
                    targets[index, c] = 1
                elif targets[index, c] != 1 and not any(
                        e == image_id and n == name and not d for e, n, d in EXTRA_OBJECTS):
                    targets[index, c] = -1
    return targets


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VOC tree, written once per test module."""
    return write_voc_tree(tmp_path_factory.mktemp("voc"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feature caches in the test's own folder (an autouse fixture of the modules that import it)."""
    monkeypatch.setenv("PRETEXTLAB_CACHE", str(tmp_path / "cache"))
