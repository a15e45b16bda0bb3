"""Write the stick: the hybrid ISO, then a `persistence` partition after it (ext4, or LUKS2 + ext4).

Safety first: the target must be a whole disk that nothing has mounted and that does not hold
the running system, big enough for the ISO plus a minimum of persistence. The written image region
is read back and compared with the ISO's sha256 before the partition is added. A disk-image file
(`--image`) goes through the same steps, which is how tests exercise them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NeuralDriveError
from .facts import OLLAMA_UID, STATE_DIR
from .steps import ProgressLine, download_status, format_bytes, info

SECTOR = 512
ALIGN = 1 << 20  # partitions start on MiB boundaries
MIN_PERSISTENCE = 1 << 30
CHUNK = 4 << 20
# Room that in-place LUKS2 encryption takes from the end of the filesystem for its header.
LUKS_RESERVE = 32 << 20
PERSISTENCE_CONF = f"{STATE_DIR} bind\n"
ESP_GPT_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MBR_ENTRIES = 446  # offset of the four 16-byte partition entries; the boot code before them stays
GPT_BACKUP_SECTORS = 33


class UsbError(NeuralDriveError):
    exit_code = 2


class UsbWriteError(NeuralDriveError):
    exit_code = 1


@dataclass(frozen=True)
class Disk:
    """What we know about a target block device before touching it."""

    name: str  # sdb
    path: str  # /dev/sdb
    size: int
    model: str = ""
    disk_type: str = "disk"
    mountpoints: tuple[str, ...] = ()  # of the disk and every partition on it
    partitions: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()  # e.g. dm-0 (LVM/LUKS built on it)

    def describe(self) -> str:
        parts = ", ".join(self.partitions) or "no partitions"
        return f"{self.path}: {self.model or 'unknown model'}, {format_bytes(self.size)}, {parts}"


@dataclass(frozen=True)
class PartitionPlan:
    iso_size: int
    start: int  # bytes
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class WriteReport:
    target: str
    iso_sha256: str
    written_bytes: int
    write_seconds: float
    verify_seconds: float
    partition: PartitionPlan | None = None
    encrypted: bool = False
    models: list[str] = field(default_factory=list)

    @property
    def write_rate(self) -> float:
        return self.written_bytes / self.write_seconds if self.write_seconds else 0.0


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsbError(f"size {text!r}: use e.g. 16G, 512M or a byte count")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) * (1 << (10 * power))


def lsblk(path: str) -> dict[str, object]:
    result = subprocess.run(["lsblk", "--json", "--bytes", "-o", "NAME,PATH,SIZE,TYPE,MODEL,MOUNTPOINTS,PKNAME",
                             path], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbError(f"{path}: lsblk: {result.stderr.strip()}")
    data: dict[str, object] = json.loads(result.stdout)
    return data


def inspect_disk(path: str, sys_root: Path = Path("/sys"), lsblk_data: dict[str, object] | None = None) -> Disk:
    """Read a device from /sys/class/block and `lsblk --json`; refuses anything but a whole disk."""
    name = Path(os.path.realpath(path)).name
    block = sys_root / "class/block" / name
    if not block.exists():
        raise UsbError(f"{path}: not a block device")
    if (block / "partition").exists():
        raise UsbError(f"{path}: is a partition; give the whole disk (e.g. /dev/sdb, not /dev/sdb1)")
    data = lsblk_data if lsblk_data is not None else lsblk(path)
    devices = data.get("blockdevices")
    if not isinstance(devices, list) or not devices:
        raise UsbError(f"{path}: lsblk reported nothing")
    top = devices[0]
    mounts: list[str] = []
    partitions: list[str] = []

    def walk(node: dict[str, object], depth: int) -> None:
        mounts.extend(m for m in node.get("mountpoints") or [] if isinstance(m, str) and m)  # type: ignore[attr-defined]
        if depth == 1:
            partitions.append(str(node.get("name")))
        for child in node.get("children") or []:  # type: ignore[attr-defined]
            walk(child, depth + 1)

    walk(top, 0)
    holders = tuple(sorted(p.name for p in (block / "holders").iterdir())) if (block / "holders").is_dir() else ()
    return Disk(name=name, path=str(top.get("path") or path), size=int(str(top.get("size"))),
                model=str(top.get("model") or "").strip(), disk_type=str(top.get("type")),
                mountpoints=tuple(mounts), partitions=tuple(partitions), holders=holders)


def root_disks(mounts_file: Path = Path("/proc/self/mounts")) -> set[str]:
    """Names of the disks behind / and every mounted filesystem that lives on a /dev node."""
    names: set[str] = set()
    for line in mounts_file.read_text().splitlines():
        source = line.split()[0]
        if source.startswith("/dev/"):
            names.add(Path(os.path.realpath(source)).name)
    return names


def check_disk(disk: Disk, iso_size: int, min_persistence: int = MIN_PERSISTENCE,
               mounted_sources: set[str] | None = None) -> None:
    """Refuse any disk we must not overwrite. Raises UsbError naming the reason."""
    if disk.disk_type not in ("disk",):
        raise UsbError(f"{disk.path}: is a {disk.disk_type}, not a whole disk")
    if disk.mountpoints:
        raise UsbError(f"{disk.path}: has mounted filesystems ({', '.join(disk.mountpoints)}); unmount them first")
    if disk.holders:
        raise UsbError(f"{disk.path}: is in use by {', '.join(disk.holders)} (LVM, RAID or an open LUKS volume)")
    # lsblk's tree already shows mounts on partitions, LVM and LUKS; /proc/mounts also catches a
    # filesystem mounted straight from the disk or one of its partitions by another namespace's view.
    busy = mounted_sources if mounted_sources is not None else root_disks()
    for source in sorted(busy & {disk.name, *disk.partitions}):
        raise UsbError(f"{disk.path}: holds a mounted filesystem ({source}), maybe the running system")
    need = align_up(iso_size) + min_persistence
    if disk.size < need:
        raise UsbError(f"{disk.path}: {format_bytes(disk.size)} is too small: the ISO and the minimum persistence "
                       f"need {format_bytes(need)}")


def align_up(value: int, to: int = ALIGN) -> int:
    return (value + to - 1) // to * to


def plan_partition(target_size: int, iso_size: int, persistence: str = "100%",
                   min_persistence: int = MIN_PERSISTENCE) -> PartitionPlan:
    """Where the persistence partition goes: right after the ISO (MiB-aligned) up to the size asked."""
    start = align_up(iso_size)
    # The last sectors stay clear: write_partition_table wipes any backup GPT there.
    available = (target_size - (GPT_BACKUP_SECTORS + 1) * SECTOR) // ALIGN * ALIGN - start
    if persistence.endswith("%"):
        percent = int(persistence[:-1]) if persistence[:-1].isdigit() else -1
        if not 1 <= percent <= 100:
            raise UsbError(f"--persistence-size {persistence!r}: a percentage must be 1%-100%")
        size = available * percent // 100 // ALIGN * ALIGN
    else:
        size = parse_size(persistence) // ALIGN * ALIGN
    if size > available:
        raise UsbError(f"--persistence-size {persistence}: only {format_bytes(available)} free after the ISO")
    if size < min_persistence:
        raise UsbError(f"--persistence-size {persistence}: {format_bytes(size)} is below the minimum "
                       f"{format_bytes(min_persistence)}")
    return PartitionPlan(iso_size=iso_size, start=start, size=size)


def write_iso(iso: Path, target: Path) -> tuple[str, int, float]:
    """Copy the ISO to the start of `target` with progress and fsync; returns (sha256, bytes, seconds)."""
    size = iso.stat().st_size
    digest = hashlib.sha256()
    progress = ProgressLine()
    started = time.monotonic()
    done = 0
    flags = os.O_WRONLY | (0 if target.is_block_device() else os.O_CREAT)
    fd = os.open(target, flags, 0o644)
    try:
        with iso.open("rb") as source:
            for block in iter(lambda: source.read(CHUNK), b""):
                os.write(fd, block)
                digest.update(block)
                done += len(block)
                progress.update(download_status(done, size, started))
        os.fsync(fd)
    finally:
        os.close(fd)
    progress.update(download_status(done, size, started), force=True)
    progress.close()
    return digest.hexdigest(), done, time.monotonic() - started


def read_back_sha256(target: Path, length: int) -> str:
    """sha256 of the first `length` bytes as the device returns them (page cache dropped first)."""
    digest = hashlib.sha256()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
        remaining = length
        while remaining:
            block = os.read(fd, min(CHUNK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def esp_extent(target: Path) -> tuple[int, int]:
    """(start, size) in sectors of the EFI system partition the ISO's GPT points at."""
    result = subprocess.run(["sfdisk", "--json", str(target)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbWriteError(f"{target}: cannot read the ISO's partition table: {result.stderr.strip()}")
    table = json.loads(result.stdout)["partitiontable"]
    for part in table.get("partitions", []):
        if str(part.get("type", "")).upper() == ESP_GPT_TYPE:
            return int(part["start"]), int(part["size"])
    raise UsbWriteError(f"{target}: the ISO has no EFI system partition in its GPT (not a hybrid ISO?)")


def _chs(lba: int) -> bytes:
    """CHS address for an MBR entry (255 heads, 63 sectors); past 1023 cylinders the 'use LBA' maximum."""
    cylinder, rest = divmod(lba, 255 * 63)
    if cylinder > 1023:
        return bytes((254, 0xFF, 0xFF))
    head, sector = divmod(rest, 63)
    return bytes((head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF))


def mbr_entry(bootable: bool, kind: int, start: int, sectors: int) -> bytes:
    return (bytes((0x80 if bootable else 0,)) + _chs(start) + bytes((kind,)) + _chs(start + sectors - 1)
            + start.to_bytes(4, "little") + sectors.to_bytes(4, "little"))


def write_partition_table(target: Path, plan: PartitionPlan) -> None:
    """Give the stick the layout Debian's own hybrid images have: an MBR whose partition 1 starts at
    sector 0 and spans the ISO 9660 file system, partition 2 the EFI image, partition 3 persistence.

    Why not keep the ISO's GPT and append to it: there no partition holds the ISO file system, so
    live-boot mounts the whole disk as its medium, and the kernel then refuses to mount any partition
    of that disk (the whole device is claimed), persistence included. With partition 1 as the medium,
    partition 3 mounts. The GPT headers are wiped so firmware and kernel read the MBR.
    """
    esp_start, esp_size = esp_extent(target)
    iso_sectors = -(-plan.iso_size // SECTOR)
    entries = (mbr_entry(True, 0x00, 0, iso_sectors) + mbr_entry(False, 0xEF, esp_start, esp_size)
               + mbr_entry(False, 0x83, plan.start // SECTOR, plan.size // SECTOR) + bytes(16))
    fd = os.open(target, os.O_RDWR)
    try:
        total = os.lseek(fd, 0, os.SEEK_END)  # the size of a device and of an image file alike
        os.pwrite(fd, entries + b"\x55\xaa", MBR_ENTRIES)
        os.pwrite(fd, bytes(SECTOR), SECTOR)  # primary GPT header
        # Whatever GPT backup the stick had at its end (ours, or from an earlier life).
        os.pwrite(fd, bytes(GPT_BACKUP_SECTORS * SECTOR), total - GPT_BACKUP_SECTORS * SECTOR)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def loop_device(target: Path, plan: PartitionPlan) -> Iterator[str]:
    """The persistence partition as a block device (a loop over its byte range: devices and images alike)."""
    result = subprocess.run(["losetup", "--find", "--show", "--offset", str(plan.start), "--sizelimit",
                             str(plan.size), str(target)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbWriteError(f"losetup: {result.stderr.strip()} (loop devices are needed to format the partition)")
    device = result.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def _cryptsetup(args: list[str], passphrase: bytes) -> None:
    result = subprocess.run(["cryptsetup", *args], input=passphrase, capture_output=True, check=False)
    if result.returncode != 0:
        raise UsbWriteError(f"cryptsetup {args[0]}: {result.stderr.decode(errors='replace').strip()}")


def luks_encrypt_in_place(device: str, passphrase: bytes, kdf: tuple[str, ...] = ()) -> None:
    """Turn the populated filesystem into LUKS2 (offline: no device-mapper needed on the build host).

    `kdf`: extra cryptsetup PBKDF options. Empty (the default for every stick) keeps cryptsetup's
    argon2id benchmarked cost; image tests pass a cheap one because unlocking runs under emulation.
    """
    _cryptsetup(["reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size", f"{LUKS_RESERVE >> 20}M",
                 *kdf, "--batch-mode", "--key-file", "-", device], passphrase)


def luks_passphrase_opens(device: str, passphrase: bytes) -> bool:
    result = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", "-", device],
                            input=passphrase, capture_output=True, check=False)
    return result.returncode == 0


def verify_models(models: Path) -> list[str]:
    """Check an Ollama models dir: each blob's content matches the sha256 in its file name."""
    blobs = models / "blobs"
    if not (models / "manifests").is_dir() or not blobs.is_dir():
        raise UsbError(f"--models {models}: not an Ollama models dir (needs manifests/ and blobs/)")
    for blob in sorted(blobs.iterdir()):
        match = re.fullmatch(r"sha256[-:]([0-9a-f]{64})", blob.name)
        if not match:
            raise UsbError(f"--models: {blob.name}: not a sha256-<hex> blob name")
        digest = hashlib.sha256()
        with blob.open("rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
        if digest.hexdigest() != match.group(1):
            raise UsbError(f"--models: {blob}: content does not match its sha256 name")
    return sorted(str(p.relative_to(models / "manifests")) for p in (models / "manifests").rglob("*") if p.is_file())


def select_models(store: Path, names: tuple[str, ...] | list[str], into: Path) -> Path:
    """A models dir at `into` holding only `names` from an Ollama store: each one's manifest and the
    blobs it references, as symlinks (populate copies their content; verify_models checks it)."""
    for name in names:
        model, _, tag = name.partition(":")
        repo = model if "/" in model else f"library/{model}"
        manifest = store / "manifests" / "registry.ollama.ai" / repo / (tag or "latest")
        if not manifest.is_file():
            raise UsbError(f"preload.models: {name}: no manifest at {manifest}")
        try:
            data = json.loads(manifest.read_text())
            digests = [data["config"]["digest"], *(layer["digest"] for layer in data["layers"])]
        except (ValueError, KeyError, TypeError):
            raise UsbError(f"preload.models: {name}: {manifest} is not an Ollama manifest") from None
        link = into / manifest.relative_to(store)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(manifest.resolve())
        (into / "blobs").mkdir(parents=True, exist_ok=True)
        for digest in digests:
            blob = store / "blobs" / str(digest).replace(":", "-")
            if not blob.is_file():
                raise UsbError(f"preload.models: {name}: blob {blob.name} is missing from {store / 'blobs'}")
            if not (into / "blobs" / blob.name).exists():
                (into / "blobs" / blob.name).symlink_to(blob.resolve())
    return into


def populate(device: str, models: Path | None, size: int) -> None:
    """ext4 labelled `persistence` (`size` bytes) holding persistence.conf and the appliance's state tree."""
    result = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "persistence", device, str(size // 1024)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbWriteError(f"mkfs.ext4 {device}: {result.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="neuraldrive-usb-") as mnt:
        subprocess.run(["mount", device, mnt], check=True)
        try:
            root = Path(mnt)
            (root / "persistence.conf").write_text(PERSISTENCE_CONF)
            state = root / STATE_DIR.lstrip("/")
            state.mkdir(parents=True)
            os.chmod(state, 0o755)
            model_dir = state / "models"
            if models is not None:
                shutil.copytree(models / "manifests", model_dir / "manifests")
                shutil.copytree(models / "blobs", model_dir / "blobs")
            model_dir.mkdir(exist_ok=True)
            for path in [model_dir, *model_dir.rglob("*")]:
                os.chown(path, OLLAMA_UID, OLLAMA_UID)
            os.chmod(model_dir, 0o750)
        finally:
            subprocess.run(["sync"], check=False)
            subprocess.run(["umount", mnt], check=True)


def write_stick(iso: Path, target: Path, plan: PartitionPlan, passphrase: bytes | None,
                models: Path | None, kdf: tuple[str, ...] = ()) -> WriteReport:
    """Write, verify, partition, format, populate. Every step raises on failure."""
    model_names = verify_models(models) if models is not None else []
    info(f"‣ Writing {iso.name} to {target}…")
    digest, written, seconds = write_iso(iso, target)
    info(f"  {format_bytes(written)} in {seconds:.1f}s ({format_bytes(written / max(seconds, 1e-3))}/s)")
    info("‣ Verifying what was written…")
    started = time.monotonic()
    readback = read_back_sha256(target, written)
    verify_seconds = time.monotonic() - started
    if readback != digest:
        raise UsbWriteError(f"{target}: read-back sha256 {readback} differs from the ISO's {digest}")
    info(f"  sha256 {digest} matches")
    info(f"‣ Adding the persistence partition ({format_bytes(plan.size)}"
         f"{', LUKS2-encrypted' if passphrase else ''})…")
    write_partition_table(target, plan)
    with loop_device(target, plan) as device:
        if passphrase is None:
            populate(device, models, plan.size)
        else:
            populate(device, models, plan.size - LUKS_RESERVE)
            info("‣ Encrypting the persistence partition (LUKS2)…")
            luks_encrypt_in_place(device, passphrase, kdf)
            if not luks_passphrase_opens(device, passphrase):
                raise UsbWriteError(f"{target}: the new LUKS2 volume does not open with the passphrase")
    return WriteReport(target=str(target), iso_sha256=digest, written_bytes=written, write_seconds=seconds,
                       verify_seconds=verify_seconds, partition=plan, encrypted=passphrase is not None,
                       models=model_names)
