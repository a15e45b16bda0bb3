"""`neuraldrive key show|rotate [--admin]`: who may read the API key, and a rotation that replaces the
file atomically with the right group and mode and tells the console, never restarting the gateway."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from tests.fixtures.gpu import lib
from tests.fixtures.neuraldrive import admin, context, dead_host


def test_key_show(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, out, _ = context(tmp_path, dead_host())
    assert admin.main(["key", "show"], ctx) == 1
    assert "no API key at" in capsys.readouterr().err
    (tmp_path / "api-key").write_text("nd-secret\n")
    assert admin.main(["key", "show"], ctx) == 0
    assert out.getvalue() == "nd-secret\n"

    def denied(path: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(lib("keys"), "read_api_key", denied)
    assert admin.main(["key", "show"], ctx) == 1
    assert "permission denied (run as root or as a member of group neuraldrive-api)" in (
        capsys.readouterr().err)


def test_key_rotate_needs_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx, _, run = context(tmp_path, dead_host(), euid=lambda: 1000)
    assert admin.main(["key", "rotate"], ctx) == 1
    assert "must be run as root" in capsys.readouterr().err
    assert run.calls == []


def test_key_rotate(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name  # stands in for neuraldrive-api
    (tmp_path / "api-key").write_text("nd-old\n")
    ctx, out, run = context(tmp_path, dead_host(), euid=lambda: 0, key_group=group)
    assert admin.main(["key", "rotate"], ctx) == 0
    key = (tmp_path / "api-key").read_text()
    assert key.startswith("nd-") and len(key) >= 3 + 43 and key.strip() == key
    info = os.stat(tmp_path / "api-key")
    assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == os.getgid()
    assert out.getvalue().splitlines()[0] == key
    assert run.calls == [["systemctl", "start", "--no-block", "neuraldrive-issue.service"]]  # no gateway restart
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".api-key")] == []


def test_admin_key_show_and_rotate(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "admin-key").write_text("nd-admin-old\n")
    ctx, out, run = context(tmp_path, dead_host(), euid=lambda: 0, key_group=group,
                            admin_key_file=tmp_path / "admin-key")
    assert admin.main(["key", "show", "--admin"], ctx) == 0
    assert out.getvalue().strip() == "nd-admin-old"
    assert admin.main(["key", "rotate", "--admin"], ctx) == 0
    new = (tmp_path / "admin-key").read_text()
    assert new.startswith("nd-") and new != "nd-admin-old" and run.calls == []  # nothing to restart
