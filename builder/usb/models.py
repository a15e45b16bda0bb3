"""The models preloaded onto a stick: an Ollama store (manifests/ + blobs/) read and checked in full
before anything is written, then copied from exactly what was checked.

The copy runs as root from a directory a user may own, so nothing in it is followed: every path is
opened component by component relative to its parent's fd with O_NOFOLLOW, and a symlink, a FIFO or
any other non-regular file anywhere in the store is refused. Every manifest must be Ollama's JSON
(config + layers, each with a sha256 digest); every blob it names must be a regular file whose content
matches that digest. Blobs are hashed again while they are copied, so a swap after the check fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from builder.usb.errors import UsbError, UsbWriteError

CHUNK = 4 << 20
MANIFEST_MAX = 1 << 20
REGISTRY = "registry.ollama.ai"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_BLOB = re.compile(r"sha256-([0-9a-f]{64})")
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class ModelStore:
    """A checked store: the manifests' bytes as validated and the names of the blobs to copy."""

    root: Path
    manifests: dict[str, bytes] = field(default_factory=dict)  # path under manifests/ → content
    blobs: tuple[str, ...] = ()  # sha256-<hex> names, each one's content checked

    @property
    def names(self) -> list[str]:
        return sorted(self.manifests)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"), (stat.S_ISCHR, "a device")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _open(dir_fd: int, name: str, where: Path, want_dir: bool) -> int:
    """Open `name` under `dir_fd` without following a link; refuses anything but the wanted kind."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        raise UsbError(f"{where}: is missing") from None
    if stat.S_ISLNK(mode):
        raise UsbError(f"{where}: is a symlink; the store may hold no links (copy the real files)")
    if not (stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode)):
        raise UsbError(f"{where}: is {_kind(mode)}, not {'a directory' if want_dir else 'a regular file'}")
    try:
        fd = os.open(name, _DIR_FLAGS if want_dir else _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise UsbError(f"{where}: cannot open: {exc.strerror}") from None
    if not want_dir and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsbError(f"{where}: changed while being checked")
    return fd


def _sha256(fd: int, copy_to: int | None = None) -> str:
    digest = hashlib.sha256()
    while block := os.read(fd, CHUNK):
        digest.update(block)
        view = memoryview(block)
        while copy_to is not None and view:
            view = view[os.write(copy_to, view):]
    return digest.hexdigest()


def parse_manifest(where: Path, data: bytes) -> list[str]:
    """The sha256 hex digests an Ollama manifest references (config first); UsbError if it is not one."""
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsbError(f"{where}: not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UsbError(f"{where}: not an Ollama manifest (a JSON object with config and layers)")
    config, layers = manifest.get("config"), manifest.get("layers")
    if not isinstance(config, dict):
        raise UsbError(f"{where}: config is missing or not an object")
    if not isinstance(layers, list) or not layers:
        raise UsbError(f"{where}: layers is missing, empty or not a list")
    digests = []
    for label, entry in [("config", config), *((f"layers[{i}]", layer) for i, layer in enumerate(layers))]:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if not match:
            raise UsbError(f"{where}: {label}.digest {digest!r} is not sha256:<64 hex digits>")
        digests.append(match.group(1))
    return digests


def _read_manifest(dir_fd: int, name: str, where: Path) -> bytes:
    fd = _open(dir_fd, name, where, want_dir=False)
    try:
        data = os.read(fd, MANIFEST_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > MANIFEST_MAX:
        raise UsbError(f"{where}: larger than {MANIFEST_MAX >> 20} MiB, not a manifest")
    return data


def _all_manifests(dir_fd: int, where: Path, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in sorted(os.listdir(dir_fd)):
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            sub = _open(dir_fd, name, where / name, want_dir=True)
            try:
                found.update(_all_manifests(sub, where / name, f"{prefix}{name}/"))
            finally:
                os.close(sub)
        else:
            found[prefix + name] = _read_manifest(dir_fd, name, where / name)
    return found


def manifest_path(name: str) -> list[str]:
    """name[:tag] or namespace/name[:tag] → the components of its path under manifests/."""
    model, _, tag = name.partition(":")
    parts = [REGISTRY, *(model.split("/") if "/" in model else ["library", model]), tag or "latest"]
    if len(parts) != 4 or not all(_COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts):
        raise UsbError(f"preload.models: {name!r} is not an Ollama model name (name[:tag])")
    return parts


def _named_manifest(manifests_fd: int, where: Path, name: str) -> tuple[str, bytes]:
    *dirs, leaf = manifest_path(name)
    fds: list[int] = []
    try:
        current, path = manifests_fd, where
        for part in dirs:
            path = path / part
            current = _open(current, part, path, want_dir=True)
            fds.append(current)
        return "/".join([*dirs, leaf]), _read_manifest(current, leaf, path / leaf)
    except UsbError as exc:
        raise UsbError(f"preload.models: {name}: {exc}") from None
    finally:
        for fd in fds:
            os.close(fd)


def _check_blob(blobs_fd: int, where: Path, name: str) -> None:
    match = _BLOB.fullmatch(name)
    if not match:
        raise UsbError(f"{where / name}: not a sha256-<hex> blob name")
    fd = _open(blobs_fd, name, where / name, want_dir=False)
    try:
        if _sha256(fd) != match.group(1):
            raise UsbError(f"{where / name}: content does not match its sha256 name")
    finally:
        os.close(fd)


def read_store(root: Path, names: Iterable[str] | None = None) -> ModelStore:
    """Check a store: all of it (`names` None: every manifest and every blob), or only the manifests of
    `names` and the blobs they reference. Raises a one-line UsbError naming the file and the problem."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsbError(f"{root}: cannot open the models dir: {exc.strerror}") from None
    fds = [root_fd]
    try:
        for sub in ("manifests", "blobs"):
            try:
                os.stat(sub, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise UsbError(f"{root}: not an Ollama models dir (needs manifests/ and blobs/)") from None
            fds.append(_open(root_fd, sub, root / sub, want_dir=True))
        manifests_fd, blobs_fd = fds[1], fds[2]
        if names is None:
            manifests = _all_manifests(manifests_fd, root / "manifests")
        else:
            manifests = dict(_named_manifest(manifests_fd, root / "manifests", name) for name in names)
        if not manifests:
            raise UsbError(f"{root / 'manifests'}: holds no manifests")
        wanted: dict[str, Path] = {}
        for rel, data in manifests.items():
            for digest in parse_manifest(root / "manifests" / rel, data):
                wanted.setdefault(f"sha256-{digest}", root / "manifests" / rel)
        present = set(os.listdir(blobs_fd))
        for blob, manifest in wanted.items():
            if blob not in present:
                raise UsbError(f"{manifest}: references {blob}, which is missing from {root / 'blobs'}")
        blobs = sorted(present) if names is None else sorted(wanted)
        for blob in blobs:
            _check_blob(blobs_fd, root / "blobs", blob)
        return ModelStore(root=root, manifests=manifests, blobs=tuple(blobs))
    finally:
        for fd in reversed(fds):
            os.close(fd)


def copy_store(store: ModelStore, dest: Path, uid: int) -> None:
    """Write `store` into `dest` (manifests/ + blobs/, owned by `uid`) from exactly what was checked."""
    for rel, data in store.manifests.items():
        target = dest / "manifests" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (dest / "blobs").mkdir(parents=True, exist_ok=True)
    root_fd = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        blobs_fd = _open(root_fd, "blobs", store.root / "blobs", want_dir=True)
        try:
            for blob in store.blobs:
                _copy_blob(blobs_fd, store.root / "blobs" / blob, dest / "blobs" / blob)
        finally:
            os.close(blobs_fd)
    finally:
        os.close(root_fd)
    for path in [dest, *dest.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _copy_blob(blobs_fd: int, source: Path, target: Path) -> None:
    try:
        fd = _open(blobs_fd, source.name, source, want_dir=False)
    except UsbError as exc:
        raise UsbWriteError(f"{exc} (changed since it was checked)") from None
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            digest = _sha256(fd, copy_to=out)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    if f"sha256-{digest}" != source.name:
        raise UsbWriteError(f"{source}: content changed since it was checked (sha256 {digest})")
