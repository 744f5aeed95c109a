"""Shortcut audit: a task built to cheat is flagged, rotation is not; the CLI records its verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pretextlab.audit import audit_task, flag_threshold, main
from pretextlab.backbones.convnet import ConvNet
from pretextlab.data import PretextDataModule
from pretextlab.data.synthetic_source import SyntheticSource
from pretextlab.ops.augment import random_crop_with_padding
from pretextlab.ops.tiles import extract_tiles, normalize_tiles
from pretextlab.table.collect import build_rows, collect_results, merge_results
from pretextlab.table.render import to_markdown
from pretextlab.tasks.base import PretextOutput, PretextTask, accuracy
from pretextlab.tasks.rotation import RotationTask
from pretextlab.train import run


class PaddingCheatTask(PretextTask):
    """A toy task whose label (one of 4) is written into a 2 px frame around the image: pure shortcut."""

    chance_accuracy = 0.25

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.backbone.feature_dim, 4)

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        targets = torch.randint(0, 4, (len(images),), device=images.device)
        inner = images[..., 2:-2, 2:-2]
        framed = nn.functional.pad(inner, (2, 2, 2, 2), value=0.0) + 0.0
        frame = torch.ones_like(images)
        frame[..., 2:-2, 2:-2] = 0.0
        framed = framed + frame * (targets.float() / 3.0).view(-1, 1, 1, 1)
        logits = self.head(self.backbone(self.backbone_input(framed)))
        return PretextOutput(loss=nn.functional.cross_entropy(logits, targets),
                             metrics={"acc": accuracy(logits, targets)})


def _datamodule() -> PretextDataModule:
    return PretextDataModule(SyntheticSource(num_train=256, num_test=128, image_size=16, seed=0), batch_size=64,
                             crop_padding=2)


def _train(task: PretextTask, datamodule: PretextDataModule, steps: int) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
    images = datamodule.split("pretrain").images
    task.train()
    for step in range(steps):
        batch = images[(step * 64) % 256 : (step * 64) % 256 + 64]
        floats = datamodule.prepare_images(batch, augment=True, padding_mode=task.crop_padding_mode)
        loss = task.pretext_step(floats, torch.full((len(batch),), -1)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_a_task_that_reads_its_label_from_the_padding_is_flagged() -> None:
    datamodule = _datamodule()
    task = PaddingCheatTask(backbone=ConvNet(width=8), online_probe=False, image_size=16)
    _train(task, datamodule, steps=40)
    audit = audit_task(task, datamodule, datamodule.split("test").images)
    assert audit["content_acc"] > 0.9, audit
    assert audit["content_free_acc"] > 0.9 and audit["flagged"], audit


def test_rotation_passes_the_audit() -> None:
    datamodule = _datamodule()
    task = RotationTask(backbone=ConvNet(width=8), online_probe=False, image_size=16)
    _train(task, datamodule, steps=40)
    audit = audit_task(task, datamodule, datamodule.split("test").images)
    assert audit["content_acc"] > 0.4, audit  # it learnt something from the images ...
    # ... and nothing from their frame (512 puzzles: one binomial standard error is 1.9 points).
    assert abs(audit["content_free_acc"] - 0.25) < 0.05, audit
    assert not audit["flagged"]


def test_threshold_is_at_least_the_margin_and_covers_sampling_noise() -> None:
    assert flag_threshold(0.25, 1_000_000) == pytest.approx(0.30)
    assert flag_threshold(0.5, 16) == pytest.approx(0.5 + 4 * 0.125)


def test_zero_padding_marks_corner_tiles_and_reflect_padding_does_not() -> None:
    flat = torch.full((64, 3, 32, 32), 0.6)
    generator = torch.Generator().manual_seed(0)
    for mode, leaks in (("constant", True), ("reflect", False)):
        cropped = random_crop_with_padding(flat, 4, generator, mode=mode)
        tiles = normalize_tiles(extract_tiles(cropped, grid=2, tile_ratio=0.8), per_channel=True)
        assert bool(tiles.abs().amax() > 0.5) == leaks, mode  # flat tiles normalise to zeros


def test_cli_audits_a_run_and_the_table_shows_it(make_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import FAST_RUN

    run_dir = tmp_path / "sweep" / "0_rotation"
    run(make_config(FAST_RUN, tiny=False, run_dir=run_dir))
    assert main([str(run_dir), "--images", "64"]) == 0
    assert "ok — pretext acc" in capsys.readouterr().out
    audit = json.loads((run_dir / "results.json").read_text())["audit"]
    assert audit["applicable"] and not audit["flagged"] and audit["images"] == 64
    assert "| ok (audited) |" in to_markdown(build_rows(merge_results(collect_results([tmp_path / "sweep"]))), [])
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("pretextlab: error: ")
