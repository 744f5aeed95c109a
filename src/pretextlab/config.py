"""Composing the packaged configs outside a Hydra app, and the error every bad config ends in.

Where each config-time job lives: :mod:`pretextlab.paths` (where the configs are),
:mod:`pretextlab.validation` (what a composed config may hold), :mod:`pretextlab.redaction`
(credentials kept out of everything written or logged).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from pretextlab.paths import config_dir, searchpath_override


class ConfigError(ValueError):
    """A composed config holds a value pretextlab cannot run with.

    ``problems`` lists every problem found, one line each; ``str(error)`` starts with the first.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message)

def compose_train(overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False,
                  config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """The packaged ``train.yaml`` composed with ``overrides`` as the command line would (Hydra's
    compose API), outside a Hydra app: for tests, benchmarks and notebooks. ``config_dirs`` join the
    search path (as ``--config-dir`` does on the command line). Clears any Hydra instance first.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[*searchpath_override(config_dirs), *overrides],
                       return_hydra_config=return_hydra_config)


def quoted_value(value: str) -> str:
    """A Hydra override value holding ``value`` verbatim: quoted, so commas, spaces and '=' stay literal,
    with quotes, backslashes and ``${`` escaped (a path is never read as an interpolation)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${") + "'"
