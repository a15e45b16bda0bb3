"""Check rendered systemd units with systemd-analyze as new as the image's.

A host older than the image (bookworm's systemd 252 does not know RestartSteps) verifies inside
the trixie root scripts/setup-host bootstraps for this (TOOLS_ROOT); a trixie host uses its own.
`systemd-analyze verify` insists that every ExecStart command exists, so units are checked inside
a scratch root: the rendered includes, systemd's unit library, and stand-ins for the commands
only the image has (ollama, caddy, nvidia tools). The stand-ins only satisfy that existence check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from builder.vm.qemu import TOOLS_ROOT  # the trixie tools root, shared with QEMU


def analyze_root() -> Path:
    """Where the systemd-analyze to use lives: the trixie root if there is one (and we may
    chroot), else the host."""
    if (TOOLS_ROOT / "usr/bin/systemd-analyze").exists() and os.geteuid() == 0:
        return TOOLS_ROOT
    return Path("/")

_EXEC = re.compile(r"^Exec\w+=[-+!@:]*(/\S+)", re.MULTILINE)


def verify_root(includes: Path, scratch: Path) -> Path:
    """A root dir holding `includes` plus what verify needs to resolve units and commands."""
    root = scratch / "root"
    if root.exists():
        return root
    shutil.copytree(includes, root, symlinks=True)
    system = root / "usr/lib/systemd/system"
    system.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(analyze_root() / "usr/lib/systemd/system", system, symlinks=True, dirs_exist_ok=True)
    for unit in (root / "etc/systemd/system").rglob("*.service"):
        for command in _EXEC.findall(unit.read_text(encoding="utf-8")):
            target = root / command.lstrip("/")
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("#!/bin/sh\n# stand-in for systemd-analyze verify\n")
                target.chmod(0o755)
    return root


def units(root: Path) -> list[str]:
    found = sorted(p.name for p in (root / "etc/systemd/system").glob("neuraldrive-*")
                   if p.is_file() and "@check." not in p.name)
    assert found, f"no neuraldrive units under {root}"
    return found


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    # Template units are verified through an instance name.
    paths = [f"/etc/systemd/system/{n.replace('@.', '@check.')}" for n in names]
    for name, path in zip(names, paths, strict=True):
        if name != Path(path).name:
            shutil.copyfile(root / "etc/systemd/system" / name, root / path.lstrip("/"))
    return _analyze(root, ["verify", "--man=no"], paths)


def _analyze(root: Path, args: list[str], tail: list[str]) -> subprocess.CompletedProcess[str]:
    """systemd-analyze ARGS --root=ROOT TAIL, on the host or chrooted into the trixie root (with a
    copy of ROOT inside it)."""
    base = analyze_root()
    if base == Path("/"):
        return subprocess.run(["systemd-analyze", *args, f"--root={root}", *tail],
                              capture_output=True, text=True, check=False)
    inner = base / "tmp" / f"neuraldrive-verify-{uuid.uuid4().hex[:8]}"
    shutil.copytree(root, inner, symlinks=True)
    try:
        return subprocess.run(["chroot", str(base), "systemd-analyze", *args, f"--root=/tmp/{inner.name}", *tail],
                              capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(inner, ignore_errors=True)


def exposure(root: Path, name: str) -> tuple[float, str]:
    """`systemd-analyze security --offline` overall exposure of one unit, and the full table."""
    unit = name.replace("@.", "@check.")
    result = _analyze(root, ["security", "--offline=true"], ["--no-pager", unit])
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure for {name}:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1)), result.stdout
