"""What a new persistence partition holds before its first boot: live-boot's persistence.conf, the
appliance's state tree (models preloaded by `--models`), the journal's directory, and the admin's
SSH public keys (`--authorized-keys`). One function for sticks (builder/usb/write.py) and the image
tests' persistence disks (builder/vm/media.py), so both keep the same things."""

from __future__ import annotations

import os
from pathlib import Path

from builder import facts


def lay_out(root: Path, authorized_keys: list[str] | None = None) -> Path:
    """Write persistence.conf and the directories under the mounted (or staged) partition `root`;
    returns the models dir (empty, for the caller to fill). `authorized_keys`: validated key lines
    (builder.profile.sshkeys), written for the admin account."""
    (root / "persistence.conf").write_text(facts.PERSISTENCE_CONF)
    state = root / facts.STATE_DIR.lstrip("/")
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o755)
    # live-boot binds this over /var/log/journal; systemd-tmpfiles gives it journald's group at boot.
    journal = root / facts.JOURNAL_DIR.lstrip("/")
    journal.mkdir(parents=True, exist_ok=True)
    os.chmod(journal, 0o2755)
    if authorized_keys:
        keys_dir = root / facts.AUTHORIZED_KEYS_DIR.lstrip("/")
        keys_dir.mkdir(exist_ok=True)
        os.chmod(keys_dir, 0o755)
        keys = keys_dir / facts.ADMIN_USER
        keys.write_text("".join(f"{line}\n" for line in authorized_keys))
        os.chmod(keys, 0o644)  # sshd reads it as the user; StrictModes wants root's, not writable by others
    model_dir = state / "models"
    model_dir.mkdir(exist_ok=True)
    return model_dir


def own_models_dir(model_dir: Path) -> None:
    """The engine's user owns its models dir (root only: a staging dir of an unprivileged run keeps its owner)."""
    if os.geteuid() == 0:
        os.chown(model_dir, facts.OLLAMA_UID, facts.OLLAMA_UID)
    os.chmod(model_dir, 0o750)
