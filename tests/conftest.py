"""Shared test helpers: compose the real configs (Hydra compose API) with tiny settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from pretextlab.backbones.base import Backbone
from pretextlab.config import compose_train

#: The checkout the tests run from, and its own presets (``conf/``: data beside the repository), which
#: the repository's scripts add to Hydra's search path as the tests do here.
REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_CONF = REPO_ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

#: Overrides that make any experiment finish in seconds on 2 CPU cores.
TINY = [
    "data.source.num_train=256",
    "data.source.num_test=128",
    "data.batch_size=64",
    "data.eval_batch_size=128",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "logger=none",
]
#: A whole rotation run in a few seconds (two steps, no offline evaluation), for tests that need a
#: finished run directory rather than learning. Compose it with ``tiny=False``.
FAST_RUN = [
    "task=rotation",
    "data.source.num_train=128",
    "data.source.num_test=64",
    "data.batch_size=64",
    "data.eval_batch_size=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "task.panel_images=0",
    "eval=none",
    "logger=none",
]

#: Added when the composed eval options include the linear probe.
TINY_LINEAR = [
    "eval.protocols.linear.epochs=3",
    "eval.protocols.linear.lrs=[0.01]",
    "eval.protocols.linear.weight_decays=[0.0]",
]


def compose_config(overrides: list[str] | None = None, run_dir: Path | None = None,
                   tiny: bool = True) -> DictConfig:
    """Compose the packaged ``train.yaml`` (+ the repository presets) as the command line would, with TINY settings first."""
    cfg = compose_train((TINY if tiny else []) + list(overrides or []), config_dirs=[REPO_CONF])
    if tiny and "linear" in (cfg.eval.protocols or {}):
        cfg = compose_train(TINY + TINY_LINEAR + list(overrides or []), config_dirs=[REPO_CONF])
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
    return cfg


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(["task=jigsaw"])`` → a tiny composed config writing into ``tmp_path/run``."""

    def _make(overrides: list[str] | None = None, tiny: bool = True, run_dir: Path | None = None) -> DictConfig:
        return compose_config(overrides, run_dir or tmp_path / "run", tiny)

    return _make


@pytest.fixture(autouse=True)
def _clear_hydra() -> Iterator[None]:
    yield
    GlobalHydra.instance().clear()


class TokenBackbone(Backbone):
    """A stand-in transformer: 4 px patches to 8-dim tokens, no spatial maps.

    ``image_size``: when set, inputs of any other size are refused (a fixed token grid).
    """

    def __init__(self, image_size: int | None = None) -> None:
        super().__init__()
        self.in_channels, self.stage_names, self.stage_dims, self.build_config = 3, ("tokens",), (8,), {}
        self.image_size = image_size
        self.embed = torch.nn.Linear(3 * 16, 8)

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.image_size is not None:
            assert images.shape[-2:] == (self.image_size, self.image_size), images.shape
        return [self.embed(torch.nn.functional.unfold(images, 4, stride=4).transpose(1, 2))]

    @property
    def is_convolutional(self) -> bool:
        return False
