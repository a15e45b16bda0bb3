"""What a new persistence partition holds (builder/usb/content.py): the same for sticks and the image
tests' persistence disks."""

from __future__ import annotations

from pathlib import Path

from builder import facts
from builder.usb.content import lay_out

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f admin@host"


def test_conf_state_and_journal_dirs(tmp_path: Path) -> None:
    models = lay_out(tmp_path)
    assert (tmp_path / "persistence.conf").read_text() == facts.PERSISTENCE_CONF
    assert models == tmp_path / "var/lib/neuraldrive/models" and models.is_dir()
    assert (tmp_path / "var/lib/neuraldrive").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "var/log/journal").stat().st_mode & 0o7777 == 0o2755
    assert not (tmp_path / "var/lib/neuraldrive/authorized_keys").exists()


def test_admin_keys_are_written_world_readable_for_sshd(tmp_path: Path) -> None:
    lay_out(tmp_path, [KEY, KEY.replace("admin@host", "second")])
    keys = tmp_path / facts.AUTHORIZED_KEYS_DIR.lstrip("/") / facts.ADMIN_USER
    assert keys.read_text() == f"{KEY}\n{KEY.replace('admin@host', 'second')}\n"
    assert keys.stat().st_mode & 0o777 == 0o644
    assert keys.parent.stat().st_mode & 0o777 == 0o755
