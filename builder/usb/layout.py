"""The stick's layout, decided in full before anything is written: Debian's hybrid MBR (partition 1
the ISO file system from sector 0, 2 the EFI image the ISO's GPT points at, 3 persistence), the
persistence size, and the MBR's 32-bit sector limits. Every layout error is a UsbError (exit 2)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.console import format_bytes
from builder.usb.errors import UsbError

SECTOR = 512
ALIGN = 1 << 20  # partitions start on MiB boundaries
MIN_PERSISTENCE = 1 << 30
GiB = 1 << 30
# The system region a first write reserves by default (--system-size): twice the ISO, at least 4 GiB,
# in whole GiB. Releases grow by whole GPU backends (a new CUDA major version ships next to the old
# one in Ollama's archive); twice today's size takes one such step, and 4 GiB a CPU image's growth
# into a GPU one. `usb --upgrade` can only write a release that fits in this region.
MIN_SYSTEM = 4 * GiB
ESP_GPT_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MBR_ENTRIES = 446  # offset of the four 16-byte partition entries; the boot code before them stays
GPT_BACKUP_SECTORS = 33
# An MBR entry holds 32-bit sector numbers; every partition must also end within them (2 TiB), since
# firmware and tools compute the end in 32 bits too. Persistence past that is unreachable.
MBR_MAX_SECTORS = (1 << 32) - 1
MBR_LIMIT = MBR_MAX_SECTORS // (ALIGN // SECTOR) * ALIGN  # the last MiB boundary an MBR partition can end at


@dataclass(frozen=True)
class PartitionPlan:
    iso_size: int
    start: int  # bytes
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Layout:
    """Everything write_partition_table needs, checked: no step after the ISO write can fail on it."""

    target_size: int
    persistence: PartitionPlan
    esp: tuple[int, int]  # (start, size) in sectors
    mbr_entries: bytes  # 64 bytes: the four entries written at MBR_ENTRIES

    @property
    def backup_gpt_offset(self) -> int:
        return self.target_size - GPT_BACKUP_SECTORS * SECTOR


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsbError(f"size {text!r}: use e.g. 16G, 512M or a byte count")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) * (1 << (10 * power))


def align_up(value: int, to: int = ALIGN) -> int:
    return (value + to - 1) // to * to


def default_system_size(iso_size: int) -> int:
    return align_up(max(2 * iso_size, MIN_SYSTEM), GiB)


def plan_partition(target_size: int, iso_size: int, persistence: str = "100%",
                   min_persistence: int = MIN_PERSISTENCE, system_size: int = 0) -> PartitionPlan:
    """Where the persistence partition goes: after the system region (the ISO, or `system_size` if
    larger, MiB-aligned) up to the size asked. A percentage is of the space an MBR can address (the
    first 2 TiB); an explicit size past it is refused."""
    if system_size and system_size < iso_size:
        raise UsbError(f"--system-size {format_bytes(system_size)}: smaller than the {format_bytes(iso_size)} ISO")
    start = align_up(max(iso_size, system_size))
    # The last sectors stay clear: write_partition_table wipes any backup GPT there.
    disk_end = (target_size - (GPT_BACKUP_SECTORS + 1) * SECTOR) // ALIGN * ALIGN
    available = min(disk_end, MBR_LIMIT) - start
    if available < min_persistence:
        raise UsbError(f"{format_bytes(target_size)} target: only {format_bytes(max(available, 0))} free after the "
                       f"{format_bytes(start)} system region, below the minimum persistence "
                       f"{format_bytes(min_persistence)}")
    if persistence.endswith("%"):
        percent = int(persistence[:-1]) if persistence[:-1].isdigit() else -1
        if not 1 <= percent <= 100:
            raise UsbError(f"--persistence-size {persistence!r}: a percentage must be 1%-100%")
        size = available * percent // 100 // ALIGN * ALIGN
    else:
        size = parse_size(persistence) // ALIGN * ALIGN
    if size > available:
        limit = " (the MBR limit is 2 TiB)" if disk_end > MBR_LIMIT else ""
        raise UsbError(f"--persistence-size {persistence}: only {format_bytes(available)} free after the ISO{limit}")
    if size < min_persistence:
        raise UsbError(f"--persistence-size {persistence}: {format_bytes(size)} is below the minimum "
                       f"{format_bytes(min_persistence)}")
    return PartitionPlan(iso_size=iso_size, start=start, size=size)


def esp_extent(iso: Path) -> tuple[int, int]:
    """(start, size) in sectors of the EFI system partition the ISO's GPT points at (read from the ISO file)."""
    result = subprocess.run(["sfdisk", "--json", str(iso)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbError(f"{iso}: cannot read the ISO's partition table: {result.stderr.strip()}")
    try:
        table = json.loads(result.stdout)["partitiontable"]
        for part in table.get("partitions", []):
            if str(part.get("type", "")).upper() == ESP_GPT_TYPE:
                return int(part["start"]), int(part["size"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsbError(f"{iso}: sfdisk gave an unreadable partition table") from None
    raise UsbError(f"{iso}: the ISO has no EFI system partition in its GPT (not a hybrid ISO?)")


def _chs(lba: int) -> bytes:
    """CHS address for an MBR entry (255 heads, 63 sectors); past 1023 cylinders the 'use LBA' maximum."""
    cylinder, rest = divmod(lba, 255 * 63)
    if cylinder > 1023:
        return bytes((254, 0xFF, 0xFF))
    head, sector = divmod(rest, 63)
    return bytes((head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF))


def mbr_entry(bootable: bool, kind: int, start: int, sectors: int) -> bytes:
    if start < 0 or sectors <= 0 or start + sectors > MBR_MAX_SECTORS:
        raise UsbError(f"partition type {kind:#04x} at sector {start}, {sectors} sectors: outside the MBR's "
                       f"32-bit range (2 TiB)")
    return (bytes((0x80 if bootable else 0,)) + _chs(start) + bytes((kind,)) + _chs(start + sectors - 1)
            + start.to_bytes(4, "little") + sectors.to_bytes(4, "little"))


def plan_layout(target_size: int, iso_size: int, esp: tuple[int, int], persistence: str = "100%",
                min_persistence: int = MIN_PERSISTENCE, system_size: int = 0) -> Layout:
    """The whole stick layout for a target of `target_size` bytes; raises UsbError before anything is written."""
    plan = plan_partition(target_size, iso_size, persistence, min_persistence, system_size)
    iso_sectors = -(-iso_size // SECTOR)
    esp_start, esp_size = esp
    if esp_start < 1 or esp_start + esp_size > iso_sectors:
        raise UsbError(f"ISO: its EFI partition (sectors {esp_start}+{esp_size}) is not inside the "
                       f"{iso_sectors}-sector image")
    entries = (mbr_entry(True, 0x00, 0, iso_sectors) + mbr_entry(False, 0xEF, esp_start, esp_size)
               + mbr_entry(False, 0x83, plan.start // SECTOR, plan.size // SECTOR) + bytes(16))
    return Layout(target_size=target_size, persistence=plan, esp=esp, mbr_entries=entries)
