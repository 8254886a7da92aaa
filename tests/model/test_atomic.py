"""model/bundle/atomic.py: a replaced file is the old one or the new one, never half of either."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import pytest

from model.bundle.atomic import _UMASK, atomic_write, atomic_write_text


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_UMASK  # not mkstemp's owner-only 0600


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_text(target, "old")

    def half(f: BinaryIO) -> None:
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_the_bytes_and_the_rename_are_synced_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "f", "x")
    assert synced == ["file", "dir"]
