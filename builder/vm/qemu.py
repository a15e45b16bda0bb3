"""Which QEMU boots the test guests, and the command line that runs it.

Under TCG, bookworm's QEMU 7.2 spends most of a live boot invalidating translated code: a host
`perf` of the exec of /sbin/init showed 97 % of QEMU's time in its own TB-invalidation paths and
1.6 % in guest code, and the same test ISO reached the gateway after 125 s with 7.2 and 48 s with
trixie's 10.0. So when the host's QEMU is older than MIN_MAJOR, scripts/setup-host installs
trixie's into the trixie tools root and the guest runs there: chrooted, in a private mount
namespace that binds /dev, /proc, /sys and the host directories the guest's files live in at the
same paths (serial socket, ISO, overlays), so nothing stays mounted when QEMU exits or is killed.
`NEURALDRIVE_QEMU=host` forces the host's QEMU (to compare).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from builder.console import debug
from builder.errors import VMError

TOOLS_ROOT = Path("/usr/local/lib/neuraldrive-tools/trixie")
MIN_MAJOR = 10
BINARY = "qemu-system-x86_64"
OVMF_DIR = Path("/usr/share/OVMF")
# Top-level directories of the tools root itself: a host path under one of these is bound as the
# directory itself (never the whole /usr or /var of the host over the root's).
ROOT_SYSTEM_DIRS = frozenset({"bin", "boot", "dev", "etc", "lib", "lib64", "proc", "run", "sbin", "sys", "usr", "var"})
# $1: the root; then the directories to bind, "--", QEMU's arguments.
_CHROOT_SCRIPT = r"""set -e
root=$1; shift
for dir in /dev /proc /sys; do mount --rbind "$dir" "$root$dir"; done
while [ "$1" != "--" ]; do mkdir -p "$root$1"; mount --rbind "$1" "$root$1"; shift; done
shift
exec chroot "$root" qemu-system-x86_64 "$@"
"""


@dataclass(frozen=True)
class Qemu:
    version: str
    root: Path | None  # the tools root it runs chrooted in; None: the host's own

    @property
    def description(self) -> str:
        return f"QEMU {self.version} ({'trixie tools root' if self.root else 'host'})"

    def ovmf(self, name: str) -> Path:
        """An OVMF file as the host sees it (to copy the variable store from)."""
        return (self.root or Path("/")) / OVMF_DIR.relative_to("/") / name

    def command(self, args: list[str], paths: Iterable[Path] = ()) -> list[str]:
        """The full command for QEMU with `args`; `paths` are the host files/dirs it must reach."""
        if self.root is None:
            return [BINARY, *args]
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _CHROOT_SCRIPT,
                "neuraldrive-qemu", str(self.root), *bind_dirs(paths), "--", *args]


def bind_dirs(paths: Iterable[Path]) -> list[str]:
    """The host directories to bind into the root so every path in `paths` resolves the same."""
    binds: set[str] = set()
    for given in paths:
        path = given.resolve()
        directory = path if path.is_dir() else path.parent
        top = directory.parts[1] if len(directory.parts) > 1 else ""
        if not top:
            raise VMError(f"{path}: QEMU's files must not live in / itself")
        binds.add(str(directory) if top in ROOT_SYSTEM_DIRS else f"/{top}")
    # A parent bound after its child would hide it: bind shorter paths first.
    return sorted(binds, key=lambda b: (b.count("/"), b))


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def _version(command: list[str]) -> str | None:
    try:
        out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30,
                             check=False, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else None


@functools.cache
def select_qemu() -> Qemu:
    host = _version([BINARY])
    choice = os.environ.get("NEURALDRIVE_QEMU", "auto")
    if choice not in ("auto", "host"):
        raise VMError(f"NEURALDRIVE_QEMU={choice!r}: use auto or host")
    if choice == "auto" and (host is None or _major(host) < MIN_MAJOR) and (TOOLS_ROOT / "usr/bin" / BINARY).exists():
        # Asked through the very wrapper the guests use: where mount namespaces or chroot are not
        # allowed (no root, a locked-down container) the host's QEMU it is, slow but working.
        tools = _version(Qemu("?", TOOLS_ROOT).command([])) if os.geteuid() == 0 else None
        if tools is not None:
            debug(f"host QEMU {host or 'missing'} is slow under TCG: using the tools root's {tools}")
            return Qemu(tools, TOOLS_ROOT)
    if host is None:
        raise VMError(f"{BINARY} not found: install qemu-system-x86 (scripts/setup-host)")
    return Qemu(host, None)
