"""Streamed image folders (data.source.in_memory=false): loaders, sharding, resume, presets, the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image

from pretextlab.config import ConfigError
from pretextlab.validation import validate_config
from pretextlab.data import DataError, PretextDataModule, StreamingFolderSource
from pretextlab.data.streaming import CropPolicy, StreamingDataset, collate_images, decode_on_device
from pretextlab.ops.patches import PatchLayout
from pretextlab.ops.tiles import tile_geometry
from pretextlab.train import run

from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.source.image_size=16", "data.source.resize_size=20", "data.source.eval_image_size=16"]
QUICK = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "logger=none",
         "eval.pool_size=1"]


def streamed_config(root: Path, *overrides: str, run_dir: Path | None = None) -> Any:
    """data=imagefolder streamed from ``root`` at 16 px, quick trainer settings, then ``overrides``."""
    return compose_config(["data=imagefolder", "data.source.in_memory=false", f"data.source.root={root}", *SMALL,
                           *QUICK, *overrides], run_dir=run_dir, tiny=False)


def _jpeg(path: Path, rng: np.random.Generator, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def labelled_folder(root: Path, classes: int = 2, train: int = 6, test: int = 2) -> Path:
    """``root/{train,test}/c<k>/<i>.jpg`` of assorted sizes (none square, some smaller than a crop)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for k in range(classes):
            for i in range(count):
                _jpeg(root / split / f"c{k:02d}" / f"{i}.jpg", rng, 14 + 3 * i, 24 + k)
    return root


def streaming_source(root: Path, **options: Any) -> StreamingFolderSource:
    defaults = {"image_size": 16, "resize_size": 20, "eval_image_size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return StreamingFolderSource(str(root), **{**defaults, **options})


def _batches(loader: Any) -> list[list[int]]:
    return [labels.tolist() for _, labels in loader]


def test_a_labelled_folder_streams_at_the_training_and_the_evaluation_geometry(tmp_path):
    source = streaming_source(labelled_folder(tmp_path / "data"), eval_image_size=12)
    assert (source.num_classes, source.class_names, source.image_size) == (2, ("c00", "c01"), 16)
    module = PretextDataModule(source, batch_size=4, eval_batch_size=3)
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and labels.dtype == torch.long
    assert len(module.train_dataloader()) == 3  # 12 images, batches of 4
    val = list(module.val_dataloader())
    assert [tuple(b[0].shape) for b in val] == [(3, 3, 16, 16), (1, 3, 16, 16)]  # validation: training size
    test = torch.cat([b[0] for b in module.eval_dataloader("test")])
    assert test.shape == (4, 3, 12, 12)  # offline evaluation: its own centre crop
    assert torch.cat([b[1] for b in module.eval_dataloader("test")]).tolist() == [0, 0, 1, 1]
    # Evaluation crops are deterministic; pretraining crops are not.
    again = torch.cat([b[0] for b in module.eval_dataloader("test")])
    assert torch.equal(test, again)
    # Streamed batches were augmented by the workers: the DataModule only converts them.
    floats = module.prepare_images(images, augment=True)
    assert torch.equal(floats, images.float() / 255)
    with pytest.raises(DataError, match="streamed from disk.*in_memory=true"):
        module.split("train")


def test_an_unlabeled_folder_is_pretrained_on_and_refused_for_evaluation(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(8):
        _jpeg(tmp_path / "photos" / "train" / f"{i}.jpg", rng, 20, 30)
    source = streaming_source(tmp_path / "photos", test_dir=None)
    assert (source.num_classes, source.labelled) == (0, False)
    _, labels = next(iter(PretextDataModule(source, batch_size=4).train_dataloader()))
    assert labels.tolist() == [-1] * 4
    with pytest.raises(ConfigError, match=r"^data.source.train_dir=train is not allowed.*no class sub-folders"):
        validate_config(streamed_config(tmp_path / "photos", "eval=linear"))
    validate_config(streamed_config(tmp_path / "photos", "eval=none", "data.source.test_dir=null", "data.batch_size=4"))


def test_fine_tuning_is_refused_before_pretraining_when_streaming(tmp_path):
    cfg = streamed_config(labelled_folder(tmp_path / "data"), "eval=finetune", "data.batch_size=4")
    with pytest.raises(ConfigError, match=r"^eval.protocols.finetune \(.*\) is not allowed with data.source.in_memory=false: fine-tuning"):
        validate_config(cfg)


def test_two_ranks_take_disjoint_halves_of_each_global_batch(tmp_path):
    # One image per class: a label names its image.
    source = streaming_source(labelled_folder(tmp_path / "data", classes=16, train=1, test=1))
    single = PretextDataModule(source, batch_size=8, seed=5)
    ranks = []
    for rank in range(2):
        module = PretextDataModule(source, batch_size=4, seed=5)
        module.trainer = SimpleNamespace(world_size=2, global_rank=rank,  # type: ignore[assignment]
                                         strategy=SimpleNamespace(root_device=torch.device("cpu")))
        ranks.append(_batches(module.train_dataloader()))
    whole = _batches(single.train_dataloader())
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 2
    for global_batch, part0, part1 in zip(whole, ranks[0], ranks[1], strict=True):
        assert not set(part0) & set(part1)
        assert part0 + part1 == global_batch  # the same global batches as one process of batch 16


class RecordBatches(L.Callback):
    """Writes the labels of every training batch (one image per class: labels name images)."""

    seen: dict[str, list[list[int]]] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        RecordBatches.seen.setdefault(self.name, []).append(batch[1].tolist())


class Crash(L.Callback):
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == self.batch:
            raise RuntimeError("simulated kill")


def _resumable(root: Path, run_dir: Path, name: str, crash: int | None = None) -> Any:
    cfg = streamed_config(root, "data.batch_size=2", "data.num_workers=1", "trainer.max_epochs=2", "eval=none",
                          "task.panel_images=0", "task.online_probe=false", run_dir=run_dir)
    with open_dict(cfg):
        cfg.callbacks.checkpoint.every_n_epochs = None
        cfg.callbacks.checkpoint.every_n_train_steps = 1  # a checkpoint after every step: mid-epoch ones
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordBatches", "name": name}
        if crash is not None:
            cfg.callbacks.crash = {"_target_": f"{__name__}.Crash", "batch": crash}
    return cfg


def test_a_run_resumed_mid_epoch_trains_exactly_the_remaining_batches(tmp_path):
    root = labelled_folder(tmp_path / "data", classes=10, train=1, test=1)
    RecordBatches.seen.clear()
    run(_resumable(root, tmp_path / "whole", "whole"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(_resumable(root, tmp_path / "cut", "before", crash=3))
    checkpoint = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["PretextDataModule"] == {"train_epoch": 1, "train_batches": 3}
    resumed = run(_resumable(root, tmp_path / "cut", "after"))
    assert resumed["steps"] == 10
    seen = RecordBatches.seen
    assert len(seen["whole"]) == 10 and seen["whole"][:5] != seen["whole"][5:]  # epochs are shuffled apart
    # The kill came at the 4th batch of epoch 2: the resumed run trains batches 4 and 5 of that epoch.
    assert seen["before"][:8] == seen["whole"][:8]
    assert seen["after"] == seen["whole"][8:]


def test_the_sampler_resumes_exactly_without_a_trainer(tmp_path):
    source = streaming_source(labelled_folder(tmp_path / "data", classes=12, train=1, test=1))
    whole = _batches(PretextDataModule(source, batch_size=2, seed=1).train_dataloader())
    resumed = PretextDataModule(source, batch_size=2, seed=1)
    resumed.load_state_dict({"train_epoch": 0, "train_batches": 4})
    assert _batches(resumed.train_dataloader()) == whole[4:]
    # A checkpoint taken at the end of epoch 0 continues with the whole of epoch 1, in epoch 1's order.
    finished = PretextDataModule(source, batch_size=2, seed=1)
    finished.load_state_dict({"train_epoch": 1, "train_batches": 0})
    fresh = PretextDataModule(source, batch_size=2, seed=1).train_dataloader()
    fresh.batch_sampler.set_epoch(1)  # type: ignore[union-attr]
    assert _batches(finished.train_dataloader()) == _batches(fresh) != whole


def test_unreadable_files_are_skipped_or_stop_the_run_naming_the_file(tmp_path, caplog):
    root = labelled_folder(tmp_path / "data")
    bad = root / "train" / "c00" / "2.jpg"
    bad.write_bytes(b"not a jpeg")
    listing = streaming_source(root).listing("pretrain")
    crop = CropPolicy(8, "resize_center", 8)
    caplog.set_level(logging.WARNING)
    skipping = StreamingDataset(listing, crop, on_bad_image="skip")
    image, label = skipping[2]  # served by the next readable file
    assert image.shape == (3, 8, 8) and label == 0 and "2.jpg" in caplog.text
    with pytest.raises(DataError, match=r"cannot read image .*2\.jpg.*on_bad_image=skip"):
        StreamingDataset(listing, crop, on_bad_image="fail")[2]


def test_the_gpu_decode_path_decodes_batches_like_the_workers(tmp_path, caplog):
    # CI has no GPU: the batched decode_jpeg call runs on the CPU device, the flag falls back with a warning.
    root = labelled_folder(tmp_path / "data")
    listing = streaming_source(root).listing("pretrain")
    crop = CropPolicy(10, "resize_center", 10)
    encoded, labels = collate_images([StreamingDataset(listing, crop, encoded=True)[i] for i in range(4)])
    assert isinstance(encoded, list) and all(item.ndim == 1 for item in encoded)
    on_device = decode_on_device(encoded, crop, torch.device("cpu"))
    in_workers = torch.stack([StreamingDataset(listing, crop)[i][0] for i in range(4)])
    assert on_device.shape == (4, 3, 10, 10) and torch.equal(on_device, in_workers)
    if not torch.cuda.is_available():
        caplog.set_level(logging.WARNING)
        module = PretextDataModule(streaming_source(root, decode_device="cuda"), batch_size=4)
        images, _ = next(iter(module.train_dataloader()))
        assert images.shape == (4, 3, 16, 16) and "decoding JPEGs on the CPU" in caplog.text


IMAGENET_ROWS = {"rotation": 224, "supervised": 224, "jigsaw": 225, "colorization": 176, "context": 398,
                 "inpainting": 128, "none": 224}


@pytest.mark.parametrize("preset", ["table_imagenet", "table_imagenet100"])
def test_imagenet_presets_give_each_task_its_paper_geometry(tmp_path, preset):
    root = labelled_folder(tmp_path / "imagenet", classes=2, train=1, test=1)
    os.rename(root / "test", root / "val")
    for task, size in IMAGENET_ROWS.items():
        cfg = compose_config([f"experiment={preset}", f"task={task}", f"data.source.root={root}"],
                             run_dir=tmp_path / "run", tiny=False)
        if not torch.cuda.is_available():
            with open_dict(cfg):  # everything but the GPU itself is checked here
                cfg.trainer.accelerator = "cpu"
        validate_config(cfg)
        assert (cfg.backbone.name, cfg.trainer.devices) == ("resnet50", -1)
        assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"
        assert cfg.data.source.in_memory is False and cfg.data.source.image_size == size
        assert (cfg.data.source.resize_size, cfg.data.source.eval_image_size) == (256, 224) or task in (
            "context", "inpainting")
        assert cfg.data.source.num_classes == (1000 if preset == "table_imagenet" else 100)
        assert list(cfg.eval.protocols) == ["linear"] and cfg.eval.stages == "all"
    jigsaw = compose_config([f"experiment={preset}", "task=jigsaw"], tiny=False).task
    assert tile_geometry(225, 225, jigsaw.grid, jigsaw.tile_ratio, jigsaw.color_jitter_px).tile == 64
    context = compose_config([f"experiment={preset}", "task=context"], tiny=False).task
    PatchLayout(context.patch_size, context.gap, context.jitter).validate(398, 398)


def test_imagenet_source_checks_the_class_count(tmp_path):
    root = labelled_folder(tmp_path / "imagenet")
    with pytest.raises(DataError, match=r"^data.source.root=.* holds 2 class folders, this dataset has 1000"):
        StreamingFolderSource(str(root), test_dir="test", num_classes=1000)


def _cli(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PRETEXTLAB_CACHE=str(cwd / "cache"), HYDRA_FULL_ERROR="0")
    env.pop("PRETEXTLAB_TRACEBACK", None)
    return subprocess.Popen([sys.executable, "-m", "pretextlab.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_command_line_trains_on_a_streamed_folder_and_names_a_bad_root(tmp_path):
    root = labelled_folder(tmp_path / "data", train=8, test=4)
    good = _cli(["data=imagefolder", "data.source.in_memory=false", f"data.source.root={root}", *SMALL,
                 "data.batch_size=4", "data.num_workers=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 "eval=linear", "eval.protocols.linear.epochs=2", "eval.protocols.linear.lrs=[0.01]",
                 "eval.protocols.linear.weight_decays=[0.0]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    missing = _cli(["data=imagenet", f"hydra.run.dir={tmp_path / 'missing'}"], tmp_path)
    wrong = _cli(["data=imagenet", f"data.source.root={tmp_path / 'nowhere'}", "data.source.image_size=32",
                  f"hydra.run.dir={tmp_path / 'wrong'}"], tmp_path)
    for process, expected in ((missing, "pretextlab: error: data.source.root is required but not set (???)"),
                              (wrong, f"pretextlab: error: data.source.root={tmp_path / 'nowhere'} does not exist;")):
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, err
        errors = [line for line in err.splitlines() if line.startswith("pretextlab: error:")]
        assert len(errors) == 1 and errors[0].startswith(expected), err  # (Lightning's seed line may precede it)
        assert "Traceback" not in err
    out, err = good.communicate(timeout=600)
    assert good.returncode == 0, err[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["steps"] == 4
    assert results["config"]["data"]["source"]["in_memory"] is False
    assert 0.0 <= results["eval"]["linear"]["top1"] <= 1.0
    assert (tmp_path / "run" / "csv").exists() or any((tmp_path / "run").rglob("metrics.csv"))


@pytest.mark.slow  # a benchmark's smoke run (about 30 s): benchmarks stay out of the suite's time
def test_loader_benchmark_runs_on_a_tiny_folder(tmp_path):
    figures = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_loader.py", "--images", "24", "--width", "250",
                           "--height", "190", "--batch", "4", "--workers", "0", "--repeats", "1",
                           "--memory-copies", "2", "--cache-dir", str(tmp_path / "cache"), "--json", str(figures)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(figures.read_text())
    assert result["images"] == 24 and result["throughput"][0]["streaming"] > 0
    assert [row["images"] for row in result["memory"]] == [24, 48] and result["memory"][0]["peak_uss_mib"] > 0


@pytest.mark.parametrize(("preset", "classes", "statistics"), [("imagenet", 1000, True), ("imagenet100", 100, True),
                                                               ("places205", 205, False)])
def test_dataset_presets_stream_a_folder_copy(preset, classes, statistics):
    data = compose_config([f"data={preset}", "data.source.root=/data/copy"], tiny=False).data
    assert (data.name, data.source.in_memory, data.source.num_classes) == (preset, False, classes)
    assert (data.source.train_dir, data.source.test_dir) == ("train", "val")
    assert (data.source.mean is not None) == statistics  # Places205's are estimated from its images


def test_exif_rotated_jpegs_skip_the_gpu_decoder_which_would_ignore_the_rotation(tmp_path):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (12, 20, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise"
    (tmp_path / "photos" / "train").mkdir(parents=True)
    image.save(tmp_path / "photos" / "train" / "rotated.jpg", exif=exif)
    image.save(tmp_path / "photos" / "train" / "plain.jpg")
    listing = streaming_source(tmp_path / "photos", test_dir=None).listing("pretrain")
    dataset = StreamingDataset(listing, CropPolicy(8, "resize_center", 8), encoded=True)
    kinds = {listing.path(i).rsplit("/", 1)[-1]: dataset[i][0].ndim for i in range(2)}
    assert kinds == {"plain.jpg": 1, "rotated.jpg": 3}  # still encoded / decoded upright in the worker


def test_colorization_fits_its_colour_prior_from_the_streamed_pretraining_files(tmp_path):
    root = labelled_folder(tmp_path / "data", train=6)
    cfg = streamed_config(root, "task=colorization", "task.prior_images=5", "task.panel_images=0", "eval=none",
                          "data.batch_size=4",
                          run_dir=tmp_path / "run")
    datamodule = instantiate(cfg.data)
    picked = datamodule.sample_images("pretrain", 5)
    assert picked.dtype == torch.uint8 and tuple(picked.shape) == (5, 3, 16, 16)  # 5 of 12 files, centre-cut
    assert datamodule.sample_images("pretrain", 50).shape[0] == 12  # never more than the split holds

    results = run(cfg)
    assert results["status"] == "ok"
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert bool(state["prior_fitted"])
    assert not torch.allclose(state["prior"], torch.full_like(state["prior"], 1 / len(state["prior"])))
