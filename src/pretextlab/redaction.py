"""Credentials kept out of everything pretextlab writes or logs: configs, metadata, overrides, W&B."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

_SECRET_ENV_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
#: Values shorter than this are not treated as secrets (``WANDB_KEY=1`` would redact every "1").
_MIN_SECRET_LENGTH = 6
REDACTED = "<redacted>"


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials (``WANDB_API_KEY``, ``*_TOKEN``...)."""
    return sorted(
        {value for name, value in os.environ.items()
         if _SECRET_ENV_PATTERN.search(name) and len(value) >= _MIN_SECRET_LENGTH},
        key=len, reverse=True,  # longest first, so a secret containing another is replaced whole
    )


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` with every credential from the environment replaced by ``<redacted>``.

    Works on strings and on nested dicts/lists of them; other values pass through. Catches a key
    that reached a config through ``${oc.env:WANDB_API_KEY}`` whatever the config key is called.
    """
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: redact(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, secrets) for item in value)
    return value


#: Config keys whose string values are credentials whatever they hold.
SECRET_KEY_MARKERS = ("key", "token", "secret", "password")


def scrub(value: Any) -> Any:
    """:func:`redact`, and also every non-empty string or number under a key that names a
    credential (``api_key``, ``token``, ...): for configs and metadata that are written out or
    logged. (A command line's ``+extra.api_token=12345678`` reaches the config as a number.)"""
    if isinstance(value, Mapping):
        return {key: REDACTED if is_secret_key(key) and _is_secret_value(item) else scrub(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(item) for item in value)
    return redact(value)


def _is_secret_value(item: Any) -> bool:
    return (isinstance(item, str) and item != "") or (isinstance(item, (int, float)) and not isinstance(item, bool))


def is_secret_key(key: Any) -> bool:
    """Whether a config key (its last dotted part) names a credential: ``api_key``, ``extra.token``, ...

    Any key containing one of :data:`SECRET_KEY_MARKERS` (case-insensitive) counts: ``keys`` and
    ``monkey`` too; better a harmless value redacted than a credential written.
    """
    last = str(key).rsplit(".", 1)[-1].lower()
    return any(marker in last for marker in SECRET_KEY_MARKERS)


#: A command-line override: optional ``+``/``++``/``~`` prefix, a dotted key (``@package`` allowed), ``=``, a value.
_OVERRIDE = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[^=\s]+?)=(?P<value>.*)$", re.DOTALL)


def scrub_override(text: str) -> str:
    """One ``key=value`` command-line override as it may be written or logged.

    The value of a key that names a credential (``+extra.api_token=...``) becomes ``<redacted>``;
    credentials from the environment are redacted anywhere (:func:`redact`). Anything that is
    not an override (a flag, a path) only goes through :func:`redact`.
    """
    match = _OVERRIDE.match(text)
    if match and match["value"] and is_secret_key(match["key"].split("@", 1)[0]):
        return f"{match['prefix'] or ''}{match['key']}={REDACTED}"
    return redact(text)
