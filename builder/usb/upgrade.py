"""`build.py usb --upgrade`: a new release over a NeuralDrive stick's system region (the hybrid ISO
from sector 0: MBR partitions 1 and 2), its persistence partition (3) left byte for byte as it was.

Decided before a byte is written: the target is one of our sticks (partition 3 an MBR Linux partition
holding ext4 or LUKS2 labelled `persistence`, as builder/usb/write.py makes it), and the new ISO ends
at or before partition 3's start. The write never touches an offset at or past that start. The
ISO's first two sectors (the MBR with the new partition table, and the wiped GPT header) go last,
after the rest is on the disk: an upgrade cut short leaves the old table, so it can be run again.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from builder.console import ProgressLine, download_status, format_bytes, info
from builder.usb.errors import UsbError, UsbWriteError
from builder.usb.layout import MBR_ENTRIES, SECTOR, mbr_entry
from builder.usb.write import CHUNK, verify_written

LABEL = b"persistence"
LINUX = 0x83
EXT4_MAGIC = 0xEF53
LUKS_MAGIC = b"LUKS\xba\xbe"
HEAD = 2 * SECTOR  # the MBR and the primary GPT header's sector: written last


@dataclass(frozen=True)
class Persistence:
    """Partition 3 of a stick, as found."""

    start: int  # bytes
    size: int
    kind: str  # "ext4" | "LUKS2"
    entries_tail: bytes  # MBR entries 3 and 4 (32 bytes), kept verbatim

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class UpgradePlan:
    iso_size: int
    persistence: Persistence
    mbr_entries: bytes  # 64 bytes: the new 1 and 2, the stick's own 3 and 4


@dataclass
class UpgradeReport:
    target: str
    region_sha256: str  # of the system region as written (the ISO with the stick's partition table)
    written_bytes: int
    write_seconds: float
    verify_seconds: float
    persistence: Persistence
    persistence_before: str | None = None  # sha256 of partition 3 (--verify-persistence)
    persistence_after: str | None = None

    def summary(self) -> str:
        kept = (f"persistence sha256 {self.persistence_after} before and after" if self.persistence_after
                else "persistence not read (--verify-persistence hashes it before and after)")
        return (f"upgraded {self.target}: {self.written_bytes >> 20} MiB in {self.write_seconds:.1f}s, verified in "
                f"{self.verify_seconds:.1f}s; {self.persistence.kind} persistence "
                f"({self.persistence.size >> 20} MiB) kept; {kept}")


def persistence_kind(head: bytes) -> str | None:
    """"LUKS2" or "ext4" when the partition's first 4 KiB are one labelled `persistence`, else None.

    LUKS2's binary header: magic (6 bytes), version (u16 BE), header size, seqid (u64 each), label
    (48 bytes at 24). ext4's superblock at 1024: s_magic (le16) at +56, s_volume_name[16] at +120."""
    if head[:6] == LUKS_MAGIC and int.from_bytes(head[6:8], "big") == 2:
        return "LUKS2" if head[24:72].split(b"\0", 1)[0] == LABEL else None
    if len(head) >= 1024 + 136 and int.from_bytes(head[1024 + 56:1024 + 58], "little") == EXT4_MAGIC:
        return "ext4" if head[1024 + 120:1024 + 136].split(b"\0", 1)[0] == LABEL else None
    return None


def inspect_stick(fd: int, target: str) -> Persistence:
    """Partition 3 of the stick behind `fd`; UsbError (nothing written) if it is not one of ours."""
    size = os.lseek(fd, 0, os.SEEK_END)
    mbr = os.pread(fd, SECTOR, 0)
    not_ours = f"{target}: not a NeuralDrive stick (written by build.py usb)"
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise UsbError(f"{not_ours}: no MBR partition table")
    entry = mbr[MBR_ENTRIES + 32:MBR_ENTRIES + 48]
    kind, start, sectors = entry[4], int.from_bytes(entry[8:12], "little"), int.from_bytes(entry[12:16], "little")
    if kind != LINUX or start == 0 or sectors == 0:
        raise UsbError(f"{not_ours}: partition 3 is not a Linux partition (type {kind:#04x}, {sectors} sectors)")
    part = Persistence(start=start * SECTOR, size=sectors * SECTOR, kind="", entries_tail=mbr[MBR_ENTRIES + 32:510])
    if part.end > size:
        raise UsbError(f"{not_ours}: partition 3 ends at {part.end} bytes, past the {size}-byte disk")
    found = persistence_kind(os.pread(fd, 4096, part.start))
    if found is None:
        raise UsbError(f"{not_ours}: partition 3 holds neither ext4 nor LUKS2 labelled 'persistence'")
    return Persistence(part.start, part.size, found, part.entries_tail)


def plan_upgrade(persistence: Persistence, iso_size: int, esp: tuple[int, int], iso_name: str) -> UpgradePlan:
    """The new partition table; UsbError if the ISO does not fit before partition 3."""
    iso_sectors = -(-iso_size // SECTOR)
    if iso_sectors * SECTOR > persistence.start:
        raise UsbError(f"{iso_name}: {format_bytes(iso_size)} does not fit in the stick's "
                       f"{format_bytes(persistence.start)} system region (partition 3 starts there); nothing "
                       f"written. A new stick with a larger --system-size takes it")
    esp_start, esp_size = esp
    if esp_start < 1 or esp_start + esp_size > iso_sectors:
        raise UsbError(f"{iso_name}: its EFI partition (sectors {esp_start}+{esp_size}) is not inside the "
                       f"{iso_sectors}-sector image")
    entries = mbr_entry(True, 0x00, 0, iso_sectors) + mbr_entry(False, 0xEF, esp_start, esp_size)
    return UpgradePlan(iso_size=iso_size, persistence=persistence, mbr_entries=entries + persistence.entries_tail)


def region_sha256(fd: int, start: int, size: int, what: str) -> str:
    """sha256 of `size` bytes at `start` as the device returns them (page cache dropped), with progress."""
    digest = hashlib.sha256()
    os.posix_fadvise(fd, start, size, os.POSIX_FADV_DONTNEED)
    progress = ProgressLine()
    started = time.monotonic()
    done = 0
    while done < size:
        block = os.pread(fd, min(CHUNK, size - done), start + done)
        if not block:
            raise UsbWriteError(f"{what}: short read at {start + done}")
        digest.update(block)
        done += len(block)
        progress.update(download_status(done, size, started))
    progress.close()
    return digest.hexdigest()


def _pwrite_all(fd: int, data: bytes, offset: int, limit: int) -> None:
    if offset + len(data) > limit:  # the one rule of an upgrade, checked at every write
        raise UsbWriteError(f"refusing to write at {offset}+{len(data)}: past the system region ({limit})")
    view = memoryview(data)
    while view:
        view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]


def write_system_region(iso: Path, fd: int, plan: UpgradePlan) -> tuple[str, int, float]:
    """The ISO from sector 0 with the stick's partition table in its MBR and its GPT header wiped:
    everything after the first two sectors first (fsync), then those. Returns (sha256 of what the
    region must now hold, bytes, seconds)."""
    limit = plan.persistence.start
    digest = hashlib.sha256()
    progress = ProgressLine()
    started = time.monotonic()
    with iso.open("rb") as source:
        first = source.read(HEAD)
        head = first[:MBR_ENTRIES] + plan.mbr_entries + b"\x55\xaa" + bytes(SECTOR)
        head += first[len(head):]  # an ISO shorter than two sectors: sfdisk found no ESP in it anyway
        digest.update(head)
        done = len(head)
        for block in iter(lambda: source.read(CHUNK), b""):
            _pwrite_all(fd, block, done, limit)
            digest.update(block)
            done += len(block)
            progress.update(download_status(done, plan.iso_size, started))
    os.fsync(fd)
    _pwrite_all(fd, head, 0, limit)
    os.fsync(fd)
    progress.update(download_status(done, plan.iso_size, started), force=True)
    progress.close()
    return digest.hexdigest(), done, time.monotonic() - started


def upgrade_stick(iso: Path, fd: int, target: str, plan: UpgradePlan, verify_persistence: bool) -> UpgradeReport:
    part = plan.persistence
    before = region_sha256(fd, part.start, part.size, target) if verify_persistence else None
    if before:
        info(f"  persistence partition sha256 {before}")
    info(f"‣ Writing {iso.name} to the system region of {target} (persistence kept)…")
    digest, written, seconds = write_system_region(iso, fd, plan)
    info(f"  {format_bytes(written)} in {seconds:.1f}s ({format_bytes(written / max(seconds, 1e-3))}/s)")
    verify_seconds = verify_written(fd, written, digest, target, "the written system region's")
    after = None
    if verify_persistence:
        info("‣ Reading the persistence partition again…")
        after = region_sha256(fd, part.start, part.size, target)
        if after != before:
            raise UsbWriteError(f"{target}: the persistence partition changed: sha256 {before} before, {after} after")
    return UpgradeReport(target=target, region_sha256=digest, written_bytes=written, write_seconds=seconds,
                         verify_seconds=verify_seconds, persistence=part, persistence_before=before,
                         persistence_after=after)


def open_image(path: Path) -> int:
    """An existing disk-image file, read-write (never created, truncated or followed through a symlink)."""
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UsbError(f"{path}: cannot open the stick image: {exc.strerror}") from None


def upgrade_image(iso: Path, image: Path, esp: tuple[int, int], verify_persistence: bool = True) -> UpgradeReport:
    """`usb --upgrade --image` in one call (the image tests' way): inspect, plan, write."""
    fd = open_image(image)
    try:
        plan = plan_upgrade(inspect_stick(fd, str(image)), iso.stat().st_size, esp, iso.name)
        return upgrade_stick(iso, fd, str(image), plan, verify_persistence)
    finally:
        os.close(fd)
