"""Replacing a small private file so that a crash or kill -9 leaves the old content or the new,
never a torn or world-readable one: the keystore and the terminal agent's sealed state."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600


def replace_private_file(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write `data` to a temporary file beside `path` (created with `mode`), fsync it, rename it
    over `path` and fsync the directory: returns only once the new content is durable. The
    temporary file is named `.<name>.*`, so a holder of the file's lock can sweep leftovers."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
