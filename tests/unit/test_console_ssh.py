"""The console menu's Add an SSH public key: checked with ssh-keygen, added atomically, refusals."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.console import FakeScreen, device
from tests.fixtures.gpu import lib

console = lib("console")
console_ssh = lib("console_ssh")
common = lib("common")


@pytest.fixture
def public_key(tmp_path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "op@laptop", "-f", str(tmp_path / "k")],
                   check=True)
    return (tmp_path / "k.pub").read_text().strip()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_ssh_key_is_checked_then_added_atomically(tmp_path: Path, public_key: str) -> None:
    dev = device(tmp_path, "127.0.0.1:9", run=common.run_command)
    keys = dev.keys_file
    screen = FakeScreen(("menu", "5"), ("ask", "  " + public_key.replace(" ", "   ") + "  "))
    console.main_menu(screen, dev)
    assert keys.read_text() == public_key + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o644 and stat.S_IMODE(keys.parent.stat().st_mode) == 0o755
    ((title, body),) = screen.texts()
    assert title == "Add an SSH public key" and body.startswith("added for neuraldrive-admin: 256 SHA256:")
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl other@host"
    keys.write_text(other)  # an operator's file without a final newline: kept as it was
    for answer in (public_key, public_key.rsplit(" ", 1)[0] + " renamed"):
        console.main_menu(FakeScreen(("menu", "5"), ("ask", answer)), dev)
    assert keys.read_text() == f"{other}\n{public_key}\n"  # once: the comment does not make it new
    assert [p.name for p in keys.parent.iterdir()] == ["neuraldrive-admin"]  # no temp file left


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
@pytest.mark.parametrize(("line", "why"), [
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "a public key starts with its type"),
    ('command="sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl',
     "options such as command= are not taken"),
    ("ssh-ed25519 AAAAnotbase64", "ssh-keygen does not take it"),
    ("ssh-ed25519 AAAA\x1b[2J", "without control characters"),
    ("ssh-rsa " + "A" * 20000, "longer than"),
])
def test_ssh_key_refused(tmp_path: Path, line: str, why: str) -> None:
    dev = device(tmp_path, "127.0.0.1:9", run=common.run_command)
    screen = FakeScreen(("menu", "5"), ("ask", line))
    console.main_menu(screen, dev)
    ((_, body),) = screen.texts()
    assert body.startswith("not added: ") and why in body
    assert not dev.keys_file.exists()


def test_ssh_key_cancelled_writes_nothing(tmp_path: Path) -> None:
    dev = device(tmp_path, "127.0.0.1:9")
    console.main_menu(FakeScreen(("menu", "5"), ("ask", None)), dev)
    assert not dev.keys_file.parent.exists()
    assert dev.run.calls == [["ip", "-j", "addr", "show", "scope", "global", "up"]]
