"""Add the administrator's SSH public key from the console (the menu's "Add an SSH public key").

The key goes to AUTHORIZED_KEYS_DIR/ADMIN_USER on the persistence partition (directory root 0755,
file root 0644, one OpenSSH public key a line), which makes sshd come up with key-only login for
that account. Only a line `ssh-keygen -l` accepts as one public key is added, with no options
(command=, from=, ...: a key typed at the console is a plain key); the file is rewritten
atomically with every key it had kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .common import Runner, atomic_write
from .paths import ADMIN_USER, AUTHORIZED_KEYS_DIR

ADMIN_KEYS = f"{AUTHORIZED_KEYS_DIR}/{ADMIN_USER}"
MAX_LINE = 16 * 1024  # an RSA 16384-bit key is ~2.8 KiB
# sshd(8) "AUTHORIZED_KEYS FILE FORMAT" key types (as builder/profile/sshkeys.py KEY_TYPES).
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-rsa")


class KeyRefusedError(Exception):
    """The line is not one usable public key; the message says why."""


def checked_line(line: str) -> str:
    """`type base64 [comment]`, whitespace collapsed; KeyRefusedError for anything else."""
    if len(line) > MAX_LINE:
        raise KeyRefusedError(f"longer than {MAX_LINE} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in line.strip()):
        raise KeyRefusedError("one line without control characters, please")
    fields = line.split()
    if not fields:
        raise KeyRefusedError("empty")
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise KeyRefusedError(f"starts with {fields[0][:40]!r}: a public key starts with its type ("
                         + ", ".join(KEY_TYPES[:2]) + ", ...); options such as command= are not taken")
    return " ".join(fields)


def fingerprint(line: str, run: Runner) -> str:
    """ssh-keygen's own check: `bits SHA256:... comment (type)`, or KeyRefusedError with its words."""
    with tempfile.TemporaryDirectory(prefix="nd-sshkey-") as tmp:
        path = Path(tmp) / "key.pub"
        path.write_text(line + "\n", encoding="utf-8")
        result = run(["ssh-keygen", "-l", "-f", str(path)])
    lines = result.stdout.strip().splitlines()
    if not result.ok or len(lines) != 1:
        raise KeyRefusedError(f"ssh-keygen does not take it as a public key ({result.reason()})"
                         if not result.ok else "ssh-keygen read more than one key")
    return lines[0]


def _blob(line: str) -> tuple[str, str]:
    fields = line.split()
    return (fields[0], fields[1]) if len(fields) >= 2 else ("", "")


def add_key(line: str, keys_file: Path, run: Runner) -> str:
    """Append the key unless the file has it; returns what to tell the person at the console."""
    key = checked_line(line)
    shown = fingerprint(key, run)
    try:
        current = keys_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRefusedError(f"cannot read {keys_file}: {exc}") from None
    if any(_blob(old) == _blob(key) for old in current.splitlines() if not old.startswith("#")):
        return f"already there: {shown}"
    keys_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(keys_file.parent, 0o755)  # sshd reads it as the user: no group or other write
    kept = current if not current or current.endswith("\n") else current + "\n"
    try:
        atomic_write(keys_file, kept + key + "\n", mode=0o644)
    except OSError as exc:
        raise KeyRefusedError(f"cannot write {keys_file}: {exc.strerror or exc}") from None
    return (f"added for {ADMIN_USER}: {shown}\n\nSSH comes up with key-only login for this account "
            f"(ssh {ADMIN_USER}@<the address on the URL screen>).")
