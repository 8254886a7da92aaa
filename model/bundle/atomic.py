"""Replacing a file so that a reader sees the old bytes or the new ones, never half of either.

Every file the project replaces in place goes through `atomic_write`: CURRENT, eval.json, label sets
and their matrices, training checkpoints. The guarantees, in order: the bytes go to a temporary file
beside the target (same file system, so the rename is atomic), are flushed and fsynced, the file gets
the permissions the umask gives (mkstemp makes it owner-only, and a server may run as another user),
is renamed over the target, and the folder is fsynced so the rename itself survives a power cut. On
any failure the temporary file is removed and the target is untouched. Torch-free, stdlib-only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def readable(path: str | Path, folder: bool = False) -> None:
    """Give what we write the permissions the umask would (mkstemp/mkdtemp make them owner-only),
    so a server running as another user (a container's uid) can read what the trainer wrote."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` with what `write(f)` writes into a binary file object, atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        readable(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
