"""Every config group option composes; bad overrides fail with Hydra's clear messages."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from pretextlab.paths import config_dir
from tests.conftest import compose_config

GROUPS = ["task", "backbone", "data", "trainer", "logger", "eval", "experiment"]


def _options(group: str) -> list[str]:
    folder = Path(config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def _all_options() -> list[tuple[str, str]]:
    return [(group, option) for group in GROUPS for option in _options(group)]


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize("group, option", _all_options())
def test_every_group_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"], tiny=False)
    assert cfg.task.name and cfg.backbone.name and cfg.data.name
    assert "_target_" in cfg.trainer


def test_slurm_launcher_composes():
    cfg = compose_config(["hydra/launcher=slurm"], tiny=False)
    assert cfg is not None


def test_misspelt_key_fails_with_hydra_message():
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'trainer.max_epoch'"):
        compose_config(["trainer.max_epoch=3"])


def test_unknown_group_option_fails_with_the_choices():
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'task/rotaton'.*Available options in 'task'"):
        compose_config(["task=rotaton"])


def test_struct_mode_is_on():
    cfg = compose_config([])
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        cfg.task.not_a_key = 1  # noqa: B018 (struct mode refuses new keys)
