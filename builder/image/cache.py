"""The build's two caches, each an archive keyed by what determines it (as mkosi's Incremental=),
written atomically and pruned to the newest few.

The package layer: the chroot after bootstrap + package installation (DKMS builds included). Key:
live-build's version, every `lb config` option that shapes the chroot (suite, mirrors, areas, apt
options — not those lbconfig marks binary-only: boot menu, ISO labels, squashfs), and the rendered
package lists and before-packages includes. A build whose key matches restores the layer and only
runs the includes, hooks and binary stage; a changed package list or mirror gives a new key.

The binary-tools chroot (binarytools.py says what it holds): keyed by the cached bootstrap it is
made from and the tool list, kept beside that bootstrap, unpacked as the binary stage's outer chroot.

The bench's reference ISO (reference.py) is keyed the same way (config_key: live-build's version and
its `lb config` options, binary-only ones too) and kept as one file (keep_file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import LiveBuildError
from builder.image.binarytools import BINARY_TOOLS, check_tools
from builder.image.lbconfig import LbOption

# Inputs inside the rendered tree that the package phase reads.
_INPUT_DIRS = ("config/package-lists", "config/includes.chroot_before_packages", "config/preseed",
               "config/archives", "config/apt")
_CONTENTS = ("chroot", ".build", "chroot.packages.install")
# Bumped when what a layer holds changes, so layers of older builders are not restored.
LAYER_FORMAT = 2  # 2: carries SINCE_FILE
# When the bootstrap + package phases began (inside .build, so the layer carries it).
SINCE_FILE = ".build/neuraldrive-packages-since"
KEEP_LAYERS = 3
TOOLS_FORMAT = 1
KEEP_TOOLS = 2


@dataclass(frozen=True)
class Layer:
    key: str
    path: Path

    def exists(self) -> bool:
        return self.path.is_file()


def config_key(kind: str, options: Sequence[LbOption], lb_version: str, binary_too: bool,
               inputs: Iterable[bytes] = ()) -> str:
    """A cache key from what live-build makes an image of: `kind` (with its format), the live-build
    version, the `lb config` options (those lbconfig marks binary-only only if `binary_too`) and
    other `inputs` that reach the build."""
    digest = hashlib.sha256()
    digest.update(f"{kind}\nlive-build {lb_version}\n".encode())
    for option in options:
        if binary_too or not option.binary_only:
            digest.update(option.option.encode() + b"\0" + option.value.encode() + b"\0")
    for chunk in inputs:
        digest.update(chunk)
    return digest.hexdigest()[:24]


def _package_inputs(build_dir: Path) -> Iterator[bytes]:
    for name in _INPUT_DIRS:
        base = build_dir / name
        for path in sorted(base.rglob("*")) if base.is_dir() else []:
            if path.is_file():
                yield str(path.relative_to(build_dir)).encode() + b"\0" + path.read_bytes() + b"\0"


def layer_key(options: Sequence[LbOption], build_dir: Path, lb_version: str) -> str:
    return config_key(f"layer format {LAYER_FORMAT}", options, lb_version, False, _package_inputs(build_dir))


def layer_for(cache_dir: Path, key: str) -> Layer:
    return Layer(key=key, path=cache_dir / "package-layer" / f"{key}.tar.zst")


def _tar(args: list[str], what: str) -> None:
    result = subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", *args],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = "; ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
        raise LiveBuildError(f"{what} failed: {detail[-500:]}")


def archive_tree(directory: Path, archive: Path, members: tuple[str, ...] = (".",),
                 exclude: tuple[str, ...] = (), what: str = "archive") -> None:
    """tar+zstd `members` of `directory` into `archive` atomically: a partial file never looks
    like a cache entry. One file system only (never a chroot's /proc or bind mounts)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
    try:
        excludes = ["--anchored", *(f"--exclude={pattern}" for pattern in exclude)] if exclude else []
        _tar(["--one-file-system", *excludes, "-I", "zstd -T0 -3",
              "-C", str(directory), "-cf", str(tmp), *members], what)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)


def extract_tree(archive: Path, directory: Path, what: str = "extract") -> None:
    _tar(["-I", "zstd -T0", "-C", str(directory), "-xpf", str(archive)], what)


def save_layer(layer: Layer, build_dir: Path) -> None:
    archive_tree(build_dir, layer.path, members=_CONTENTS, what="package layer save")
    prune_archives(layer.path.parent, "*.tar.zst", KEEP_LAYERS)


def restore_layer(layer: Layer, build_dir: Path) -> None:
    extract_tree(layer.path, build_dir, what="package layer restore")


def tools_key(build_dir: Path, lb_version: str) -> str:
    """What the tools chroot is made of: the cached bootstrap (its dpkg status) and the tool list."""
    status = build_dir / "cache/bootstrap/var/lib/dpkg/status"
    if not status.is_file():
        raise LiveBuildError(f"{status}: no cached bootstrap to make the binary-tools chroot from")
    digest = hashlib.sha256(f"tools format {TOOLS_FORMAT}\nlive-build {lb_version}\n".encode())
    digest.update(repr(BINARY_TOOLS).encode())
    digest.update(status.read_bytes())
    return digest.hexdigest()[:24]


def tools_archive(build_dir: Path, key: str) -> Path:
    """Beside the bootstrap it is made from, in the live-build cache `cache` links to."""
    return build_dir / "cache" / f"binary-tools-{key}.tar.zst"


def save_tools(build_dir: Path, archive: Path) -> None:
    """Archive the outer chroot without the image chroot inside it (atomically), keep the newest."""
    check_tools(build_dir)
    archive_tree(build_dir / "chroot", archive, exclude=("./chroot", "./chroot.cache"), what="binary-tools save")
    (build_dir / "chroot/chroot.cache").unlink(missing_ok=True)  # binary_rootfs must not swap chroots back
    prune_archives(archive.parent, "binary-tools-*.tar.zst", KEEP_TOOLS)


def restore_tools(build_dir: Path, archive: Path) -> None:
    """What binary_chroot does, with the cached tools chroot as the outer chroot."""
    chroot, image = build_dir / "chroot", build_dir / "chroot.image"
    os.rename(chroot, image)
    chroot.mkdir()
    try:
        extract_tree(archive, chroot, what=f"binary-tools restore from {archive}")
    except LiveBuildError as error:
        raise LiveBuildError(f"{error} (delete it or build with --no-cache)") from None
    os.rename(image, chroot / "chroot")
    (build_dir / ".build/binary_chroot").touch()


def keep_file(source: Path, target: Path, keep: int) -> None:
    """Move `source` to `target` atomically (a partial file never looks like a cache entry) and keep
    only the `keep` newest files of its kind (same suffix) beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.move(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    prune_archives(target.parent, f"*{target.suffix}", keep)


def prune_archives(directory: Path, pattern: str, keep: int) -> None:
    """Keep only the `keep` newest archives matching `pattern`: caches do not grow without bound."""
    archives = sorted(directory.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        old.unlink(missing_ok=True)


def mark_package_start(build_dir: Path) -> None:
    """Record when the chroot started being made (a second early: tar keeps whole-second mtimes)."""
    since = build_dir / SINCE_FILE
    since.parent.mkdir(parents=True, exist_ok=True)
    since.write_text(f"{int(time.time()) - 1}\n")


def normalize_mtimes(build_dir: Path, epoch: int) -> int:
    """Give everything the bootstrap and package phases wrote (mtime at or after their start) the
    build's SOURCE_DATE_EPOCH. Without this a restored layer carries the times of the build that
    made it, older than a newer commit's epoch, so they escape the clamping that mkinitramfs and
    mksquashfs apply, and the warm image differed from a cold one (initrd directory times).
    Files that keep their .deb's times are untouched. Returns how many entries changed."""
    since = int((build_dir / SINCE_FILE).read_text())
    chroot = build_dir / "chroot"
    device = chroot.lstat().st_dev
    stamp = epoch * 1_000_000_000
    changed = 0
    for root, dirs, files in os.walk(chroot):
        entries = [(name, os.lstat(os.path.join(root, name))) for name in (*dirs, *files)]
        # One file system: never descend into a mount (each entry is stat'ed once).
        dirs[:] = [name for name, status in entries[:len(dirs)] if status.st_dev == device]
        for name, status in entries:
            if status.st_dev == device and status.st_mtime >= since:
                os.utime(os.path.join(root, name), ns=(stamp, stamp), follow_symlinks=False)
                changed += 1
    if chroot.lstat().st_mtime >= since:
        os.utime(chroot, ns=(stamp, stamp))
    return changed
