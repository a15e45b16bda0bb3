"""builder/files.py: an atomic write gets the mode asked for, or what open() would give, never mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.files import atomic_write_text


def test_atomic_write_without_a_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "SHA256SUMS", "x\n")
        os.umask(0o077)
        atomic_write_text(tmp_path / "private", "y\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "SHA256SUMS").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_atomic_write_with_a_mode_and_nothing_left_beside_it(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "key", "secret\n", mode=0o640)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
