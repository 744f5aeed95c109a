"""Where pretextlab finds its configs and what it records about where it runs.

The configs ship inside the package (``pretextlab/conf``, Hydra's ``pkg://pretextlab.conf``), so an
installed pretextlab finds them from any folder; the working directory only decides where outputs go
(``./outputs``, as Hydra users expect) and which project the provenance names. A user's own config
folder joins the search path with Hydra's own means (``--config-dir``/``-cd``, or ``hydra.searchpath``
in their own primary config). This repository's presets for the data beside the checkout live in its
top-level ``conf/``, which the repository's scripts add the same way.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf


def config_dir() -> Path:
    """The packaged config folder (``train.yaml``, ``evaluate.yaml`` and the config groups)."""
    return Path(__file__).resolve().parent / "conf"


def source_checkout() -> Path | None:
    """The git checkout this package's code is imported from (an editable or in-tree use), else None."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / ".git").exists() and (root / "src" / "pretextlab").is_dir():
        return root
    return None


def searchpath_override(config_dirs: Sequence[str | Path]) -> list[str]:
    """``hydra.searchpath=[...]`` adding ``config_dirs`` to a composition (empty when there are none)."""
    if not config_dirs:
        return []
    entries = ",".join(f"'file://{Path(folder).resolve()}'" for folder in config_dirs)
    return [f"hydra.searchpath=[{entries}]"]


def _git(folder: Path, *arguments: str) -> str | None:
    """``git <arguments>`` run in ``folder``: its output, or None outside a repository (or without git)."""
    try:
        out = subprocess.run(["git", *arguments], cwd=folder, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder``'s git repository, or None."""
    return _git(folder, "rev-parse", "HEAD")


def git_toplevel(folder: Path) -> Path | None:
    """The root of the git repository holding ``folder``, or None."""
    root = _git(folder, "rev-parse", "--show-toplevel")
    return Path(root) if root else None


def register_resolvers() -> None:
    """``${cwd:}``: the folder pretextlab was started from (outputs and relative data roots start there)."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", lambda: str(Path.cwd().resolve()))


register_resolvers()
