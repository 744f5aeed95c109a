"""Files in and out: outputs written so that a crash at any moment leaves the old file or the new
one, never half; JSON files read back with one-line errors.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file in the
same folder (same file system, so the final ``os.replace`` is atomic), flushed to disk, then
renamed over the target. A crash before the rename leaves the old file untouched (and the temporary
file is removed on any Python exception); a crash after it leaves the new, complete file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (a power cut right after it must not undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported everywhere (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    For writers that want a file name (``torch.save``, ``fig.savefig``, ``safetensors``)::

        with atomic_path(run_dir / "table.png") as tmp:
            figure.savefig(tmp, format="png")

    On an exception inside the block the temporary file is deleted and ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp creates 0600 files; an output file gets the usual permissions (0666 minus umask).
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the old file or the new one, never half)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON atomically; serialised first, so a bad value writes nothing."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path, error: type[Exception], *, unreadable: str = "{path} cannot be read: {error}",
              invalid: str = "{path} is not valid JSON: {error}") -> Any:
    """The JSON value in ``path``; a file that cannot be read or decoded raises ``error`` with one line.

    ``unreadable`` and ``invalid`` are the two messages (``str.format`` templates with ``{path}`` and
    ``{error}``), so each reader keeps its own wording. What the value must be (an object, which
    keys) is the caller's to check. A hostile file nested deeper than Python's recursion limit is
    "not valid JSON" too, not a crash.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as cause:
        raise error(unreadable.format(path=path, error=cause)) from cause
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as cause:
        raise error(invalid.format(path=path, error=cause)) from cause
