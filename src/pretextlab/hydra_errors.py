"""Hydra's own errors on the command line (a mistyped group, key or override) as one line and exit 2.

Hydra reports a config it cannot compose with several lines and exit 1, before any pretextlab code
runs. ``run_hydra_app`` asks Hydra to raise instead (``HYDRA_FULL_ERROR``) and turns composition
errors into ``pretextlab: error: ...``; every other exception keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from pretextlab.redaction import redact

COMPOSITION_ERRORS: tuple[type[BaseException], ...] = (
    ConfigCompositionException, MissingConfigException, OverrideParseException,
)


def _lines(error: BaseException) -> list[str]:
    text = str(error)
    if isinstance(error, OmegaConfBaseException):
        text = text.split("\n    full_key:")[0]  # OmegaConf appends the key and node type
    return [line.strip() for line in text.splitlines() if line.strip()]


def composition_message(error: BaseException) -> str:
    """One line for a Hydra composition error: what was wrong, and the options or fix Hydra gave."""
    lines = _lines(error)
    if isinstance(error, OverrideParseException) and not any(error.override in line for line in lines):
        lines = [f"cannot parse override '{error.override}'", *lines]
    cause = error.__cause__
    cause_lines = _lines(cause) if cause is not None else []
    override = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
    if override and cause_lines and "is not in struct" in cause_lines[0]:
        key = override.group(1)
        return (f"{key} is not a setting of this config (mistyped? `--cfg job` prints the composed config); "
                f"to add a new key on purpose use +{key}=...")
    for index, line in enumerate(lines):
        if line.startswith("Available options in"):
            options = []
            for name in lines[index + 1:]:
                if name.startswith("Config search path"):
                    break
                if not name.startswith("_"):
                    options.append(name)
            lines = lines[:index] + [f"{line.rstrip(':').lower()}: {', '.join(options)}"]
            break
    message = "; ".join(line.rstrip(".") for line in lines)
    if message.startswith("In '") and "': " in message:
        message = message.split("': ", 1)[1]  # "In 'train': Could not find ..." -> "Could not find ..."
    if cause_lines:
        message += f" ({cause_lines[0].rstrip('.')})"
    return message[:1].lower() + message[1:]


def run_hydra_app(app: Callable[[], Any], hint: bool = True) -> Any:
    """Call a ``@hydra.main`` function; a config Hydra cannot compose ends in one line and exit 2.

    ``hint=False`` leaves out the second line (how to see the traceback): ``pretextlab.evaluate``
    reports every error in exactly one line.
    """
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing and exiting 1
    try:
        return app()
    except COMPOSITION_ERRORS as error:
        if os.environ.get("PRETEXTLAB_TRACEBACK"):
            raise
        print(f"pretextlab: error: {redact(composition_message(error))}", file=sys.stderr)
        if hint:
            print("(fix the override on the command line; set PRETEXTLAB_TRACEBACK=1 to see the traceback)",
                  file=sys.stderr)
        sys.exit(2)
