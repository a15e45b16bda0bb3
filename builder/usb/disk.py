"""The target disk: what it is (sysfs, lsblk), whether anything uses it, and an exclusive claim on it.

Everything the kernel knows about users of a disk is read from a `System` (the roots of /sys, /proc
and /dev), so tests point it at tmp dirs. Users named: mounts, device-mapper holders (LUKS, LVM),
md RAID, swap. What none of them explains (a ZFS pool, another O_EXCL opener) the claim catches:
opening a block device with O_EXCL fails with EBUSY while anything holds it exclusively.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.console import format_bytes
from builder.usb.errors import UsbError
from builder.usb.layout import MIN_PERSISTENCE, align_up


def run_lsblk(path: str) -> dict[str, object]:
    result = subprocess.run(["lsblk", "--json", "--bytes", "-o", "NAME,PATH,SIZE,TYPE,MODEL,MOUNTPOINTS,PKNAME",
                             path], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbError(f"{path}: lsblk: {result.stderr.strip()}")
    data: dict[str, object] = json.loads(result.stdout)
    return data


@dataclass(frozen=True)
class System:
    """Where the kernel's views live; tests give tmp dirs shaped like them."""

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")
    dev: Path = Path("/dev")
    lsblk: Callable[[str], dict[str, object]] = run_lsblk

    def block(self, name: str) -> Path:
        return self.sys / "class/block" / name


HOST = System()


@dataclass(frozen=True)
class Disk:
    """What we know about a target block device before touching it."""

    name: str  # sdb
    path: str  # /dev/sdb
    size: int
    model: str = ""
    disk_type: str = "disk"
    mountpoints: tuple[str, ...] = ()  # of the disk and every partition on it (lsblk's tree)
    partitions: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = ", ".join(self.partitions) or "no partitions"
        return f"{self.path}: {self.model or 'unknown model'}, {format_bytes(self.size)}, {parts}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _partitions(system: System, name: str) -> tuple[str, ...]:
    block = system.block(name)
    try:
        entries = sorted(block.iterdir())
    except OSError:
        return ()
    return tuple(p.name for p in entries if p.name.startswith(name) and (p / "partition").is_file())


def inspect_disk(path: str, system: System = HOST) -> Disk:
    """Read a device from sysfs and `lsblk --json`; refuses anything but a whole disk."""
    name = Path(os.path.realpath(path)).name
    block = system.block(name)
    if not block.exists():
        raise UsbError(f"{path}: not a block device")
    if (block / "partition").exists():
        raise UsbError(f"{path}: is a partition; give the whole disk (e.g. /dev/sdb, not /dev/sdb1)")
    devices = system.lsblk(path).get("blockdevices")
    if not isinstance(devices, list) or not devices or not isinstance(devices[0], dict):
        raise UsbError(f"{path}: lsblk reported nothing")
    top = devices[0]
    mounts: list[str] = []

    def walk(node: dict[str, object]) -> None:
        points = node.get("mountpoints")
        if isinstance(points, list):
            mounts.extend(m for m in points if isinstance(m, str) and m)
        children = node.get("children")
        for child in children if isinstance(children, list) else []:
            walk(child)

    walk(top)
    return Disk(name=name, path=str(system.dev / name), size=int(str(top.get("size"))),
                model=str(top.get("model") or "").strip(), disk_type=str(top.get("type")),
                mountpoints=tuple(mounts), partitions=_partitions(system, name))


def _dev_name(system: System, source: str) -> str:
    """The kernel name (sdb1, dm-0) of a /dev path as /proc lists it."""
    if source.startswith("/dev/"):
        return Path(os.path.realpath(system.dev / source[len("/dev/"):])).name
    return ""


def describe_holder(system: System, holder: str) -> str:
    """dm-0 (LUKS mapping 'cryptdata'), dm-1 (LVM volume 'vg-root'), md0 (RAID raid1 array)…"""
    block = system.block(holder)
    dm_name = _read(block / "dm/name")
    if dm_name:
        uuid = _read(block / "dm/uuid")
        kind = ("LUKS mapping" if uuid.startswith("CRYPT-") else "LVM volume" if uuid.startswith("LVM-")
                else "device-mapper device")
        return f"{holder} ({kind} '{dm_name}')"
    if (block / "md").is_dir():
        level = _read(block / "md/level")
        return f"{holder} (RAID {level + ' ' if level else ''}array)"
    return holder


def users(system: System, names: tuple[str, ...]) -> dict[str, list[str]]:
    """For each device name, what uses it: holders, RAID arrays, swap, mounts (empty lists left out)."""
    found: dict[str, list[str]] = {}

    def add(name: str, what: str) -> None:
        if name in names and what not in found.setdefault(name, []):
            found[name].append(what)

    for name in names:
        holders = system.block(name) / "holders"
        for holder in sorted(holders.iterdir()) if holders.is_dir() else []:
            add(name, describe_holder(system, holder.name))
    for line in _read(system.proc / "mdstat").splitlines():
        array, _, rest = line.partition(" : ")
        if re.fullmatch(r"md\S*", array.strip()):
            for member in re.findall(r"(\S+?)\[\d+\]", rest):
                add(member, describe_holder(system, array.strip()))
    for line in _read(system.proc / "swaps").splitlines()[1:]:
        fields = line.split()
        if fields:
            add(_dev_name(system, fields[0].replace("\\040", " ")), "swap")
    for line in _read(system.proc / "self/mounts").splitlines():
        fields = line.split()
        if len(fields) > 1:
            add(_dev_name(system, fields[0]), f"a filesystem mounted on {fields[1]}")
    return {name: what for name, what in found.items() if what}


def _in_use(disk: Disk, name: str, what: list[str]) -> UsbError:
    where = "" if name == disk.name else f"{name} "
    return UsbError(f"{disk.path}: {where}is in use by {', '.join(what)}; stop using it first")


def check_disk(disk: Disk, iso_size: int, system: System = HOST, min_persistence: int = MIN_PERSISTENCE) -> None:
    """Refuse any disk we must not overwrite. Raises UsbError naming the device and the reason."""
    if disk.disk_type not in ("disk",):
        raise UsbError(f"{disk.path}: is a {disk.disk_type}, not a whole disk")
    for name, what in users(system, (disk.name, *disk.partitions)).items():
        raise _in_use(disk, name, what)
    if disk.mountpoints:  # lsblk's tree: also what is mounted from a device built on this one
        raise UsbError(f"{disk.path}: has mounted filesystems ({', '.join(disk.mountpoints)}); unmount them first")
    need = align_up(iso_size) + min_persistence
    if disk.size < need:
        raise UsbError(f"{disk.path}: {format_bytes(disk.size)} is too small: the ISO and the minimum persistence "
                       f"need {format_bytes(need)}")


def _busy(system: System, disk: Disk, name: str) -> UsbError:
    what = users(system, (name,)).get(name)
    if what:
        return _in_use(disk, name, what)
    zfs = system.proc / "spl/kstat/zfs"
    pools = sorted(p.name for p in zfs.iterdir() if p.is_dir()) if zfs.is_dir() else []
    hint = f"a ZFS pool ({', '.join(pools)} imported)" if pools else "a ZFS pool, a mount in another namespace"
    return UsbError(f"{disk.path}: {'' if name == disk.name else name + ' '}is held exclusively by something "
                    f"else ({hint} or a program); release it first")


def _open_exclusive(system: System, disk: Disk, name: str) -> int:
    try:
        return os.open(system.dev / name, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise _busy(system, disk, name) from None
        raise UsbError(f"{system.dev / name}: cannot open: {exc.strerror}") from None


@contextmanager
def claim(disk: Disk, system: System = HOST) -> Iterator[int]:
    """An O_EXCL read-write fd on the whole disk, held until the block ends: write through it.

    Every partition is probed with O_EXCL first (to name the busy one); the whole-disk claim that
    follows fails too if anything claims a partition in between, and while we hold it nothing can
    mount, map or claim the disk or its partitions.
    """
    for name in _partitions(system, disk.name):
        os.close(_open_exclusive(system, disk, name))
    fd = _open_exclusive(system, disk, disk.name)
    try:
        yield fd
    finally:
        os.close(fd)
