"""The host and the build dir around a live-build run: the live-build version check, the build dir
(with its shared package cache) made, its mounts released, removed; the ISO and manifest found."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from builder.errors import HostError, LiveBuildError
from builder.profile.schema import Profile

MIN_LIVE_BUILD = "20250505"


def live_build_version() -> str:
    """The installed live-build's Debian version (e.g. 1:20250505+deb13u1)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "live-build"], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        out = None
    if out is None or out.returncode != 0 or not out.stdout:
        if shutil.which("lb") is None:
            raise HostError("live-build is not installed: run `sudo scripts/setup-host` (needs trixie's live-build)")
        return "unknown"
    return out.stdout.strip()


def check_host(require_root: bool = True) -> str:
    """Refuse hosts that cannot build a bootable image; returns the live-build version."""
    version = live_build_version()
    upstream = re.sub(r"^\d+:", "", version).split("+")[0].split("-")[0]
    if not (upstream.isdigit() and upstream >= MIN_LIVE_BUILD):
        raise HostError(
            f"live-build {version} is too old: 1:{MIN_LIVE_BUILD} or newer (trixie) is needed, older ones "
            "write ISOs without an MBR that do not boot from USB; run `sudo scripts/setup-host`"
        )
    if require_root and os.geteuid() != 0:
        raise HostError("building an image needs root (debootstrap, chroot, mounts): run with sudo")
    if shutil.which("debootstrap") is None:
        raise HostError("debootstrap not found: run `sudo scripts/setup-host`")
    return version


def cache_key(profile: Profile) -> str:
    """Key of the live-build cache (bootstrap stage + .deb files): what debootstrap depends on."""
    m = profile.debian.mirrors
    material = "\n".join([profile.debian.suite, m.bootstrap, m.chroot, m.security, " ".join(profile.debian.areas)])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def prepare_build_dir(build_dir: Path, lb_cache: Path) -> None:
    """Start from an empty build dir whose `cache` is the persistent live-build cache."""
    if build_dir.exists():
        remove_build_dir(build_dir)
    build_dir.mkdir(parents=True)
    lb_cache.mkdir(parents=True, exist_ok=True)
    (build_dir / "cache").symlink_to(lb_cache)


def mounts_below(directory: Path) -> list[str]:
    """Mount points inside `directory`, deepest first (/proc/self/mounts escapes spaces as \\040)."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def release_mounts(build_dir: Path) -> None:
    """Unmount what a failed or interrupted live-build helper left mounted in the chroot (/proc,
    /sys, /dev/pts, the config bind mount): nothing of the host stays reachable through the build
    dir, and deleting it later cannot descend into /proc or the host's file system."""
    for mount in mounts_below(build_dir):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def remove_build_dir(build_dir: Path) -> None:
    release_mounts(build_dir)
    cache = build_dir / "cache"
    if cache.is_symlink():
        cache.unlink()  # never follow it: it is the shared cache
    shutil.rmtree(build_dir)


def find_iso(build_dir: Path) -> Path:
    isos = sorted(build_dir.glob("*.iso"))
    if len(isos) != 1:
        raise LiveBuildError(f"{build_dir}: expected one ISO after lb build, found {len(isos)}")
    return isos[0]


def find_manifest(build_dir: Path) -> Path:
    """live-build's package manifest (`<image>.packages`: name and version per line)."""
    manifests = sorted(build_dir.glob("*.packages"))
    if len(manifests) != 1:
        raise LiveBuildError(f"{build_dir}: expected one package manifest after lb build, found {len(manifests)}")
    return manifests[0]
