"""Talking to a booted test guest: a per-run SSH key, an ssh_config for testinfra, remote commands."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.errors import VMError
from builder.facts import ADMIN_USER

HOST_ALIAS = "neuraldrive-vm"


@dataclass(frozen=True)
class SshAccess:
    key: Path
    config: Path
    port: int

    @property
    def target(self) -> str:
        return HOST_ALIAS


def generate_key(directory: Path) -> Path:
    """A fresh ed25519 key for one test run; only its public half goes into the test image."""
    key = directory / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "neuraldrive-image-test",
                        "-f", str(key)], check=True)
    return key


# A Unix socket path holds at most 107 bytes; ssh's ControlPath with %C (40 hex) plus the 17-byte suffix of
# the master's temporary socket name overflowed it under a deep work dir (the bench's SSH never came up:
# "SSH not ready within 600s"). %C hashes host, port and user, and every guest gets its own port, so one
# short directory serves every run.
SOCKET_PATH_MAX = 107
CONTROL_SUFFIX = 40 + 17


def control_path(directory: Path) -> str:
    """Where the SSH master's socket goes: beside the run's files when the path fits, else in the temp dir
    (or /tmp when even that is too deep)."""
    for base in (str(directory), tempfile.gettempdir(), "/tmp"):
        candidate = f"{base}/cm-%C" if base == str(directory) else f"{base}/nd-cm-%C"
        if len(candidate) - 2 + CONTROL_SUFFIX <= SOCKET_PATH_MAX:
            return candidate
    raise VMError(f"no directory short enough for an SSH control socket (tried {directory}, the temp dir, /tmp)")


def write_ssh_config(directory: Path, key: Path, port: int) -> SshAccess:
    control = control_path(directory)
    config = directory / "ssh_config"
    config.write_text(
        f"Host {HOST_ALIAS}\n"
        "  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        f"  User {ADMIN_USER}\n"
        f"  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
        "  ConnectTimeout 10\n"
        "  ServerAliveInterval 5\n"
        "  ServerAliveCountMax 6\n"
        "  ControlMaster auto\n"
        f"  ControlPath {control}\n"
        "  ControlPersist 120\n"
    )
    return SshAccess(key=key, config=config, port=port)


def ssh(access: SshAccess, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(access.config), "-o", "BatchMode=yes", HOST_ALIAS, command],
                          capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def ssh_answers(access: SshAccess) -> bool:
    try:
        return ssh(access, "true", timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def close_master(access: SshAccess) -> None:
    subprocess.run(["ssh", "-F", str(access.config), "-O", "exit", HOST_ALIAS], capture_output=True, check=False)
