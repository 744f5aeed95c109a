"""What ran and where, recorded in every results.json: pretextlab's own version and commit, the user's
project and its commit, library versions, host and time."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

import pretextlab
from pretextlab.paths import git_commit, git_toplevel, source_checkout


def provenance() -> dict[str, Any]:
    """``pretextlab_version`` and ``git_commit`` (pretextlab's checkout, None for an installed release),
    ``project`` (the git repository holding the working directory, and its commit: the user's code),
    library ``versions``, ``hostname`` and ``finished_at``."""
    import hydra as hydra_module
    import torchvision

    checkout = source_checkout()
    cwd = Path.cwd().resolve()
    project_root = git_toplevel(cwd)
    return {
        "pretextlab_version": pretextlab.__version__,
        "git_commit": git_commit(checkout) if checkout is not None else None,
        "project": {
            "dir": str(cwd),
            "git_root": str(project_root) if project_root is not None else None,
            "git_commit": git_commit(project_root) if project_root is not None else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": L.__version__,
            "hydra": hydra_module.__version__,
        },
        "hostname": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
