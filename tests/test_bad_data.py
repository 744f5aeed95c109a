"""Image folders with every kind of awkward or broken file: converted, skipped, or a clear error."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretextlab.data import DataError, ImageFolderSource

SIZE = 8
LOGGER = "pretextlab.data.image_files"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETEXTLAB_CACHE", str(tmp_path / "cache"))


def _rgb(seed: int, size: int = 12) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _good_tree(root: Path, classes=("cat", "dog"), per_class: int = 2) -> None:
    for split in ("train", "test"):
        for index, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _rgb(100 * index + i).save(folder / f"{i}.png")


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_bad_files(folder: Path) -> dict[str, Path]:
    """One file of each broken kind; returns {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "zero-byte": folder / "empty.jpg",
        "truncated": folder / "truncated.jpg",
        "corrupt": folder / "corrupt.png",
        "not an image": folder / "notes.txt",
    }
    files["zero-byte"].write_bytes(b"")
    files["truncated"].write_bytes(_jpeg_bytes(_rgb(7, 64))[:300])
    files["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    files["not an image"].write_text("these are my notes, not a picture\n")
    return files


def test_every_image_mode_becomes_rgb(tmp_path):
    root = tmp_path / "data"
    _good_tree(root)
    modes = root / "train" / "cat"
    Image.new("L", (10, 10), 77).save(modes / "gray.png")
    rgba = Image.new("RGBA", (10, 10), (10, 20, 30, 0))  # fully transparent: shows the white background
    rgba.save(modes / "rgba.png")
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(modes / "cmyk.jpg")  # CMYK red
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(modes / "white16.png")
    Image.fromarray(np.full((10, 10), 32768, dtype=np.uint16)).save(modes / "mid16.png")
    Image.new("P", (10, 10), 3).save(modes / "palette.png")
    Image.new("RGB", (3, 2), (200, 10, 10)).save(modes / "tiny.png")  # smaller than the 8 px crop

    source = ImageFolderSource(str(root), image_size=SIZE)
    train = source.load("train")
    names = [p.name for p in source._train_files["cat"]]
    assert train.images.shape == (len(names) + 2, 3, SIZE, SIZE) and train.images.dtype == torch.uint8

    def pixel(name: str) -> list[int]:
        return train.images[names.index(name), :, SIZE // 2, SIZE // 2].tolist()

    assert pixel("gray.png") == [77, 77, 77]
    assert pixel("rgba.png") == [255, 255, 255]
    red, green, blue = pixel("cmyk.jpg")
    assert red > 200 and green < 60 and blue < 60
    assert pixel("white16.png") == [255, 255, 255]  # PIL's own conversion would clip 16-bit values
    assert pixel("mid16.png") == [128, 128, 128]
    assert pixel("tiny.png") == [200, 10, 10]


def test_exif_rotation_is_applied(tmp_path):
    root = tmp_path / "data"
    _good_tree(root)
    landscape = Image.new("RGB", (16, 8), (0, 0, 255))
    landscape.paste((255, 0, 0), (0, 0, 8, 8))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    landscape.save(root / "train" / "cat" / "phone.jpg", exif=exif.tobytes(), quality=95)
    source = ImageFolderSource(str(root), image_size=SIZE)
    names = [p.name for p in source._train_files["cat"]]
    image = source.load("train").images[names.index("phone.jpg")]
    # Upright, the photo is 8 wide and 16 tall: red on top. The centre crop is the top/bottom seam,
    # so compare its first and last rows.
    assert image[0, 0].float().mean() > 200 and image[2, 0].float().mean() < 60
    assert image[2, -1].float().mean() > 200 and image[0, -1].float().mean() < 60


def test_skip_policy_leaves_bad_files_out_and_names_each_once(tmp_path, caplog):
    root = tmp_path / "data"
    _good_tree(root)
    bad = _write_bad_files(root / "train" / "dog")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    source = ImageFolderSource(str(root), image_size=SIZE, on_bad_image="skip", cache=False)
    train = source.load("train")
    assert len(train) == 4 and train.labels.tolist() == [0, 0, 1, 1]
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    for kind, path in bad.items():
        mentions = [m for m in messages if str(path) in m]
        assert len(mentions) == 1, (kind, messages)
    assert any("zero-byte file" in m for m in messages)
    assert any("not an image file" in m for m in messages)
    assert any(m.startswith("skipped 4 unreadable file(s) of 8") for m in messages), messages

    # A sweep builds the source again in the same process: no second warning per file.
    caplog.clear()
    ImageFolderSource(str(root), image_size=SIZE, on_bad_image="skip", cache=False).load("train")
    again = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert not any(str(path) in m for m in again for path in bad.values())
    assert any(m.startswith("skipped 4 unreadable file(s)") for m in again)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "corrupt", "not an image"])
def test_fail_policy_stops_naming_the_file(tmp_path, kind):
    root = tmp_path / "data"
    _good_tree(root)
    bad = _write_bad_files(tmp_path / "bad")
    target = root / "train" / "dog" / bad[kind].name
    bad[kind].rename(target)
    source = ImageFolderSource(str(root), image_size=SIZE, on_bad_image="fail")
    with pytest.raises(DataError, match=rf"^cannot read image {target}: .*on_bad_image=skip"):
        source.load("train")


def test_a_class_with_no_readable_image_is_an_error(tmp_path):
    root = tmp_path / "data"
    _good_tree(root)
    for path in (root / "train" / "dog").iterdir():
        path.unlink()
    _write_bad_files(root / "train" / "dog")
    with pytest.raises(DataError, match=r"\['dog'\] under .*train hold no readable image"):
        ImageFolderSource(str(root), image_size=SIZE).load("train")


def test_empty_class_folder(tmp_path):
    root = tmp_path / "data"
    _good_tree(root)
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/bird is empty"):
        ImageFolderSource(str(root))


def test_train_and_test_classes_differ(tmp_path):
    root = tmp_path / "data"
    _good_tree(root)
    _good_tree(tmp_path / "other", classes=("bird",))
    (tmp_path / "other" / "train" / "bird").rename(root / "train" / "bird")
    with pytest.raises(DataError, match=r"only in train: \['bird'\], only in test: \[\]"):
        ImageFolderSource(str(root))


def test_missing_root_split_or_root_that_is_a_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist; point data.source.root"):
        ImageFolderSource(str(tmp_path / "nowhere"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"file.txt is a file, not a folder"):
        ImageFolderSource(str(tmp_path / "file.txt"))
    _good_tree(tmp_path / "data")
    for path in sorted((tmp_path / "data" / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "data" / "test").rmdir()
    with pytest.raises(DataError, match=r"test folder .*data/test does not exist"):
        ImageFolderSource(str(tmp_path / "data"))


def test_hidden_folders_are_not_classes(tmp_path):
    root = tmp_path / "data"
    _good_tree(root)
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    source = ImageFolderSource(str(root), image_size=SIZE)
    assert source.class_names == ("cat", "dog")
    assert len(source.load("train")) == 4


def test_a_damaged_decode_cache_is_rebuilt(tmp_path, caplog):
    root = tmp_path / "data"
    _good_tree(root)
    first = ImageFolderSource(str(root), image_size=SIZE).load("train")
    caches = list((tmp_path / "cache").glob("imagefolder-train-*.pt"))
    assert len(caches) == 1
    caches[0].write_bytes(b"half a file")
    caplog.set_level(logging.WARNING)
    again = ImageFolderSource(str(root), image_size=SIZE).load("train")
    assert torch.equal(again.images, first.images)
    assert any("ignoring unusable decode cache" in r.getMessage() for r in caplog.records)
