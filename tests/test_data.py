import numpy as np
import pytest
import torch
from PIL import Image

from pretextlab.data import DataError, ImageFolderSource, PretextDataModule, SyntheticSource
from pretextlab.data.synthetic import CLASS_NAMES, render_scenes
from pretextlab.ops.augment import random_crop_with_padding, random_horizontal_flip


def test_synthetic_is_deterministic_in_seed_and_index():
    a, la = render_scenes(np.array([3, 7, 11]), seed=5)
    b, lb = render_scenes(np.array([11, 3]), seed=5)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert torch.equal(la[[0, 2]], lb[[1, 0]])
    c, _ = render_scenes(np.array([3]), seed=6)
    assert not torch.equal(a[0], c[0])
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 32, 32)


def test_synthetic_has_a_canonical_up_and_balanced_labels():
    images, labels = render_scenes(np.arange(400), seed=0, closeup_fraction=0.0)
    assert torch.bincount(labels, minlength=len(CLASS_NAMES)).tolist() == [40] * len(CLASS_NAMES)
    floats = images.float() / 255
    top, bottom = floats[:, :, :4], floats[:, :, -4:]
    # The sky is bluer than the ground in (nearly) every image: the scenes have an up.
    blue_excess_top = (top[:, 2] - top[:, 0]).mean(dim=(1, 2))
    blue_excess_bottom = (bottom[:, 2] - bottom[:, 0]).mean(dim=(1, 2))
    assert (blue_excess_top > blue_excess_bottom).float().mean() > 0.9
    # Close-ups replace sky and ground by one plain backdrop: top and bottom rows look alike there.
    closeups, _ = render_scenes(np.arange(400), seed=0, closeup_fraction=1.0)
    rows = closeups.float() / 255
    top_bottom_gap = (rows[:, :, :2].mean(dim=(2, 3)) - rows[:, :, -2:].mean(dim=(2, 3))).abs().sum(1)
    outdoor_gap = (floats[:, :, :2].mean(dim=(2, 3)) - floats[:, :, -2:].mean(dim=(2, 3))).abs().sum(1)
    assert top_bottom_gap.median() < outdoor_gap.median()


def test_synthetic_train_and_test_differ():
    source = SyntheticSource(num_train=20, num_test=20)
    assert not torch.equal(source.load("train").images, source.load("test").images)


def test_batched_augmentation_shapes_and_content():
    images = torch.rand(6, 3, 8, 8)
    cropped = random_crop_with_padding(images, padding=2)
    assert cropped.shape == images.shape
    # Every crop is a shifted copy: its centre 4x4 block appears in the padded image somewhere.
    flipped = random_horizontal_flip(images, probability=1.0)
    assert torch.equal(flipped, images.flip(-1))
    assert torch.equal(random_crop_with_padding(images, padding=0), images)


def test_crop_offsets_are_per_image():
    torch.manual_seed(0)
    images = torch.ones(64, 1, 4, 4)
    cropped = random_crop_with_padding(images, padding=2)
    zeros_per_image = (cropped == 0).flatten(1).sum(1)
    assert len(set(zeros_per_image.tolist())) > 1


def _write_folder(root, classes=("cat", "dog"), per_class=3, size=12):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_loads_a_tiny_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETEXTLAB_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "data")
    source = ImageFolderSource(str(tmp_path / "data"), image_size=8)
    train = source.load("train")
    assert train.images.shape == (6, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert source.num_classes == 2 and source.class_names == ("cat", "dog")
    assert len(source.mean) == 3
    dm = PretextDataModule(source, batch_size=4, eval_batch_size=4)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8
    # A second source over the same folder reads the decode cache and gets the same pixels.
    again = ImageFolderSource(str(tmp_path / "data"), image_size=8).load("train")
    assert torch.equal(again.images, train.images)


def test_missing_data_path_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"does-not-exist.*does not exist; point data.source.root"):
        ImageFolderSource(str(tmp_path / "does-not-exist"))


def test_num_pretrain_takes_a_fixed_subset():
    source = SyntheticSource(num_train=50, num_test=10)
    dm = PretextDataModule(source, num_pretrain=20, seed=3)
    again = PretextDataModule(source, num_pretrain=20, seed=3)
    assert len(dm.split("pretrain")) == 20
    assert torch.equal(dm.split("pretrain").labels, again.split("pretrain").labels)
    assert len(dm.split("train")) == 50
