"""Hydra callbacks (``hydra.callbacks`` in ``conf/train.yaml``): checks and clean-up around what Hydra writes.

Hydra creates the output directory, writes ``.hydra/`` and opens the job's log file *before* it
calls the task function, so two things cannot be done from ``pretextlab.train`` itself:

- **An output directory that cannot be written** (read-only mount, no permission, a file in the
  way) must fail with pretextlab's one line, not with Hydra's traceback from its ``mkdir``:
  :meth:`PretextlabCallbacks.on_run_start` / ``on_multirun_start`` check ``hydra.run.dir`` /
  ``hydra.sweep.dir`` before Hydra touches them, print ``pretextlab: error: ...`` and exit 2.
- **Credentials on the command line**: Hydra writes the overrides as given (``+extra.api_token=...``)
  into ``.hydra/overrides.yaml``, ``.hydra/hydra.yaml`` and ``.hydra/config.yaml`` (and, for a
  sweep, ``multirun.yaml``). :meth:`PretextlabCallbacks.on_job_start`, which Hydra calls right after
  writing them, rewrites those files with :func:`scrub_hydra_files`.

Nothing here runs when a config is composed outside Hydra's app (tests, notebooks): there
:func:`pretextlab.validation.validate_config` checks the output directory, and no ``.hydra/`` exists.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pretextlab.redaction import REDACTED, is_secret_key, redact, scrub, scrub_override
from pretextlab.validation import output_dir_problem

log = logging.getLogger(__name__)

#: What Hydra writes into ``<output dir>/<hydra.output_subdir>`` for every job.
HYDRA_JOB_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def _fail(message: str) -> None:
    print(f"pretextlab: error: {redact(message)}", file=sys.stderr)
    sys.exit(2)


def _selected_path(config: DictConfig, key: str) -> Path | None:
    try:
        value = OmegaConf.select(config, key, throw_on_resolution_failure=True)
    except Exception:  # e.g. a directory named after ${hydra:job.override_dirname}: Hydra resolves it later
        return None
    return None if value is None else Path(str(value))


class PretextlabCallbacks(Callback):
    """The output directory is checked before Hydra creates it; ``.hydra/`` files are scrubbed of credentials."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check_writable(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check_writable(config, "hydra.sweep.dir")

    @staticmethod
    def _check_writable(config: DictConfig, key: str) -> None:
        directory = _selected_path(config, key)
        if directory is None:
            return
        problem = output_dir_problem(directory, key)
        if problem:
            _fail(problem)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            output_dir = Path(str(config.hydra.runtime.output_dir))
            subdir = config.hydra.get("output_subdir")
            multirun = config.hydra.get("mode") == RunMode.MULTIRUN
            sweep_dir = _selected_path(config, "hydra.sweep.dir") if multirun else None
            scrub_hydra_files(output_dir / str(subdir) if subdir is not None else None, sweep_dir)
        except Exception as error:  # never stop a job for this; say so, since a credential may remain
            log.warning("could not scrub Hydra's files of credentials: %s", redact(str(error)))


def _scrub_hydra_node(node: Any, path: tuple[str, ...] = ()) -> Any:
    """Hydra's own config: override lists and ``override_dirname`` scrubbed, environment secrets redacted.

    Hydra's keys are not scrubbed by name (``exclude_keys`` names no credential); only what came
    from the command line is.
    """
    if isinstance(node, dict):
        return {key: _scrub_hydra_node(value, (*path, str(key))) for key, value in node.items()}
    if isinstance(node, list):
        if path[-2:-1] == ("overrides",):  # hydra.overrides.task / hydra.overrides.hydra
            return [scrub_override(item) if isinstance(item, str) else item for item in node]
        return [_scrub_hydra_node(item, path) for item in node]
    if isinstance(node, str) and path[-1:] == ("override_dirname",):
        return scrub_override_dirname(node)
    return redact(node)


#: One ``key=value`` item of ``hydra.job.override_dirname``: the value runs up to the next ``,key=`` (values may hold commas).
_DIRNAME_ITEM = re.compile(r"(?P<head>(?:^|,)(?:\+\+|\+|~)?(?P<key>[\w.@/-]+)=)(?P<value>.*?)"
                           r"(?=,(?:\+\+|\+|~)?[\w.@/-]+=|$)", re.DOTALL)


def scrub_override_dirname(text: str) -> str:
    """Hydra's ``override_dirname`` (``a=1,+extra.api_token=x,...``) with credential-like keys' values redacted."""
    def replace(match: re.Match[str]) -> str:
        return match["head"] + REDACTED if is_secret_key(match["key"]) and match["value"] else match[0]

    return redact(_DIRNAME_ITEM.sub(replace, text))


def _rewrite_yaml(path: Path, clean: Any) -> None:
    from pretextlab.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))


def scrub_hydra_files(hydra_dir: Path | None, sweep_dir: Path | None = None) -> list[Path]:
    """Rewrite the YAML files Hydra wrote for a job so that they hold no credential; returns those changed.

    - ``config.yaml`` (the composed config, interpolations unresolved): :func:`~pretextlab.redaction.scrub`,
      so every value under a credential-like key (``api_key``, ``*token*``, ``*secret*``, ``*password*``)
      becomes ``<redacted>``, and any value of a credential-like environment variable as well.
    - ``overrides.yaml`` and the override lists and ``job.override_dirname`` in ``hydra.yaml``:
      ``key=value`` with such a key becomes ``key=<redacted>``.
    - ``<sweep dir>/multirun.yaml`` (a sweep's composed config plus Hydra's node): both of the above.

    A file without anything to scrub is left untouched (not even rewritten).
    """
    targets: list[tuple[Path, Any]] = []
    if hydra_dir is not None:
        targets += [(hydra_dir / "config.yaml", scrub), (hydra_dir / "overrides.yaml", _scrub_hydra_node_overrides),
                    (hydra_dir / "hydra.yaml", _scrub_hydra_node)]
    if sweep_dir is not None:
        targets.append((sweep_dir / "multirun.yaml", _scrub_multirun))
    changed = []
    for path, clean in targets:
        if not path.is_file():
            continue
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        cleaned = clean(loaded)
        if cleaned != loaded:
            _rewrite_yaml(path, cleaned)
            changed.append(path)
    return changed


def _scrub_hydra_node_overrides(overrides: Any) -> Any:
    return [scrub_override(item) if isinstance(item, str) else redact(item) for item in overrides]


def _scrub_multirun(config: Any) -> Any:
    if not isinstance(config, dict):
        return scrub(config)
    hydra_node = config.get("hydra")
    clean = scrub({key: value for key, value in config.items() if key != "hydra"})
    if hydra_node is not None:
        clean["hydra"] = _scrub_hydra_node(hydra_node, ("hydra",))
    return clean
