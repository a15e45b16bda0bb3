"""Check rendered systemd units with the host's systemd-analyze (same major version as the image).

`systemd-analyze verify` insists that every ExecStart command exists, so units are checked inside
a scratch root: the rendered includes, the host's unit library, and stand-ins for the commands
only the image has (ollama, caddy, nvidia tools). The stand-ins only satisfy that existence check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

_EXEC = re.compile(r"^Exec\w+=[-+!@:]*(/\S+)", re.MULTILINE)


def verify_root(includes: Path, scratch: Path) -> Path:
    """A root dir holding `includes` plus what verify needs to resolve units and commands."""
    root = scratch / "root"
    if root.exists():
        return root
    shutil.copytree(includes, root, symlinks=True)
    system = root / "usr/lib/systemd/system"
    system.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree("/usr/lib/systemd/system", system, symlinks=True, dirs_exist_ok=True)
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
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *paths],
        capture_output=True,
        text=True,
        check=False,
    )


def exposure(root: Path, name: str) -> tuple[float, str]:
    """`systemd-analyze security --offline` overall exposure of one unit, and the full table."""
    unit = name.replace("@.", "@check.")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure for {name}:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1)), result.stdout


def systemd_version() -> int:
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[1])
