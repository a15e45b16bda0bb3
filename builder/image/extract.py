"""Extract a verified engine archive (tar + zstd) with an allow-list, as the builder, in Python.

Only regular files, directories, and symbolic or hard links that stay inside the tree are written;
a device node, fifo, sparse file, absolute path, `..` component, a link leading out of the tree or a
path through a symlink stops the extraction with one line naming the member. Members `keep` refuses
(a pruned GPU backend) are never written. Ownership is the extracting user's and modes lose
setuid/setgid/sticky and group/other write, as `tar --no-same-owner --no-same-permissions` under
umask 022 would give. zstd is decompressed by the `zstd` CLI, streamed.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from builder.errors import HostError, UnsafeArchiveError

_MODE_MASK = 0o755
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Extracted:
    """What one extraction wrote (archive paths, relative to the destination) and what it skipped."""

    members: list[str] = field(default_factory=list)  # every member name seen, normalized
    files: list[str] = field(default_factory=list)  # regular files and hard links written
    links: list[str] = field(default_factory=list)  # symbolic links written
    skipped_bytes: int = 0


def _kind(member: tarfile.TarInfo) -> str:
    for test, name in ((member.ischr, "character device"), (member.isblk, "block device"),
                       (member.isfifo, "fifo"), (member.issparse, "sparse file")):
        if test():
            return name
    return f"tar type {member.type!r}"


def safe_name(name: str, what: str) -> str:
    """A relative, normalized archive path, or UnsafeArchiveError."""
    if name.startswith("/") or "\0" in name:
        raise UnsafeArchiveError(f"{what}: absolute path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{what}: '..' in the path refused")
    return "/".join(parts)


def _inside(link_dir: str, target: str) -> bool:
    joined = posixpath.normpath(posixpath.join(link_dir, target))
    return not (target.startswith("/") or joined == ".." or joined.startswith("../"))


class _Writer:
    def __init__(self, label: str, dest: Path, keep: Callable[[str], bool]) -> None:
        self.label, self.dest, self.keep = label, dest, keep
        self.result = Extracted()
        self.written: set[str] = set()  # regular files, the only hard-link sources
        self.dirs: dict[str, tarfile.TarInfo] = {}  # directories this extraction made

    def where(self, name: str) -> str:
        return f"{self.label}: member {name!r}"

    def parent(self, name: str) -> Path:
        """Make the member's parent dirs; none of them may be a symlink or a non-directory."""
        current = self.dest
        for part in name.split("/")[:-1]:
            current = current / part
            try:
                status = current.lstat()
            except FileNotFoundError:
                current.mkdir(mode=0o755)
                continue
            if not stat.S_ISDIR(status.st_mode):
                raise UnsafeArchiveError(f"{self.where(name)}: path goes through {part!r}, not a directory")
        return current

    def clear(self, target: Path, name: str) -> None:
        """A later member replaces an earlier one (as tar does), never a directory."""
        try:
            status = target.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(status.st_mode):
            raise UnsafeArchiveError(f"{self.where(name)}: would replace a directory")
        target.unlink()

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        what = self.where(member.name)
        name = safe_name(member.name, what)
        self.result.members.append(name)
        if not name:
            if member.isdir():
                return  # the archive's own root
            raise UnsafeArchiveError(f"{what}: not a directory at the archive root")
        if member.issparse() or not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchiveError(f"{what}: {_kind(member)} refused (only files, directories and links)")
        if member.issym() and not _inside(posixpath.dirname(name), member.linkname):
            raise UnsafeArchiveError(f"{what}: symlink to {member.linkname!r} leads out of the tree")
        source = safe_name(member.linkname, f"{what}: hard link target") if member.islnk() else ""
        if not self.keep(name):
            self.result.skipped_bytes += member.size if member.isreg() else 0
            return
        target = self.parent(name) / name.rsplit("/", 1)[-1]
        if member.isdir():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                raise UnsafeArchiveError(f"{what}: directory would replace a file or link")
            if not target.exists():  # an existing directory (/usr/local/lib) keeps its mode
                target.mkdir(mode=0o755)
                self.dirs[name] = member
            elif name in self.dirs:
                self.dirs[name] = member
            return
        self.clear(target, name)
        if member.issym():
            os.symlink(member.linkname, target)
            self.result.links.append(name)
        elif member.islnk():
            if source not in self.written:
                raise UnsafeArchiveError(f"{what}: hard link to {member.linkname!r}, not a file written before it")
            os.link(self.dest / source, target, follow_symlinks=False)
            self.result.files.append(name)
            return  # shares the source's mode and time
        else:
            self.write(tar, member, target)
            self.written.add(name)
            self.result.files.append(name)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has a body
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, member.mode & _MODE_MASK)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.chmod(target, member.mode & _MODE_MASK)

    def finish(self) -> None:
        """Directory modes and times last (their entries changed them); then every symlink must
        resolve inside the tree on the real file system (a chain of links cannot lead out)."""
        for name in sorted(self.dirs, reverse=True):
            member = self.dirs[name]
            os.chmod(self.dest / name, (member.mode & _MODE_MASK) | 0o700)
            os.utime(self.dest / name, (member.mtime, member.mtime))
        root = os.path.realpath(self.dest)
        for name in self.result.links:
            resolved = os.path.realpath(self.dest / name)
            if resolved != root and not resolved.startswith(root + os.sep):
                (self.dest / name).unlink()
                raise UnsafeArchiveError(f"{self.where(name)}: symlink resolves to {resolved}, out of the tree")


def extract_archive(archive: Path, dest: Path, keep: Callable[[str], bool] = lambda name: True,
                    label: str | None = None) -> Extracted:
    """Stream `archive` (tar + zstd, or a plain tar) into the existing directory `dest`; errors name
    `label` (the published file name; the cache names files by their sha256)."""
    label = label or archive.name
    writer = _Writer(label, dest, keep)
    with archive.open("rb") as head:
        zstd = head.read(4) == ZSTD_MAGIC
    proc = None
    try:
        if zstd:
            proc = subprocess.Popen(["zstd", "-dcq", "--", str(archive)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            assert proc.stdout is not None
            stream: IO[bytes] = proc.stdout
        else:
            stream = archive.open("rb")
        with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                writer.add(tar, member)
        if proc is not None:
            _, err = proc.communicate()
            if proc.returncode != 0:
                detail = " ".join(err.decode(errors="replace").split())
                raise UnsafeArchiveError(f"{label}: zstd failed: {detail or f'exit {proc.returncode}'}")
    except FileNotFoundError as exc:
        if exc.filename == "zstd":
            raise HostError(f"{label}: the zstd command is missing: run `sudo scripts/setup-host`") from None
        raise
    except tarfile.TarError as exc:
        detail = str(exc)
        if proc is not None:
            proc.kill()
            stderr = proc.communicate()[1].decode(errors="replace")
            detail = " ".join(stderr.split()) or detail
        raise UnsafeArchiveError(f"{label}: not a readable tar archive ({detail})") from None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    writer.finish()
    return writer.result
