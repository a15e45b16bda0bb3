"""`usb --upgrade`: only our sticks, only an ISO that fits before partition 3, and partition 3 byte for
byte as it was (checked here with its own sha256, not the tool's). Disk-image files stand in for sticks.
Through the command and the CLI: test_usb_upgrade_command.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from builder.usb import upgrade
from builder.usb.errors import UsbError, UsbWriteError
from builder.usb.layout import MBR_ENTRIES, SECTOR, mbr_entry
from builder.usb.upgrade import inspect_stick, persistence_kind, plan_upgrade, upgrade_image
from tests.fixtures.usb import ESP, MiB
from tests.fixtures.usb_stick import DISK, P3_SIZE, P3_START, ext4_head, luks_head, make_iso, make_stick, region


def test_an_iso_that_fits_rewrites_the_system_region_only(tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    kept = make_stick(stick)
    after_p3 = region(stick, P3_START + P3_SIZE, DISK - P3_START - P3_SIZE)
    iso = make_iso(tmp_path / "b.iso", 12 * MiB + 2048)  # larger than the old one, and not MiB-aligned
    report = upgrade_image(iso, stick, ESP)
    assert region(stick, P3_START, P3_SIZE) == kept == report.persistence_before == report.persistence_after
    assert region(stick, P3_START + P3_SIZE, DISK - P3_START - P3_SIZE) == after_p3
    data, source = stick.read_bytes(), iso.read_bytes()
    assert data[2 * SECTOR:len(source)] == source[2 * SECTOR:]  # the ISO itself
    assert data[:MBR_ENTRIES] == source[:MBR_ENTRIES]  # its boot code
    entries = data[MBR_ENTRIES:MBR_ENTRIES + 64]
    iso_sectors = -(-len(source) // SECTOR)
    assert entries[:16] == mbr_entry(True, 0, 0, iso_sectors) and entries[16:32] == mbr_entry(False, 0xEF, *ESP)
    assert entries[32:48] == mbr_entry(False, 0x83, P3_START // SECTOR, P3_SIZE // SECTOR)
    assert data[510:512] == b"\x55\xaa" and data[SECTOR:2 * SECTOR] == bytes(SECTOR)  # no GPT header
    assert report.written_bytes == len(source) and report.persistence.kind == "ext4"
    assert hashlib.sha256(data[:len(source)]).hexdigest() == report.region_sha256
    assert "ext4 persistence (8 MiB) kept" in report.summary()


def test_a_luks_stick_is_upgraded_too(tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    kept = make_stick(stick, luks_head())
    report = upgrade_image(make_iso(tmp_path / "b.iso", 8 * MiB), stick, ESP)
    assert report.persistence.kind == "LUKS2" and region(stick, P3_START, P3_SIZE) == kept


def test_an_iso_that_does_not_fit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    make_stick(stick)
    before = hashlib.sha256(stick.read_bytes()).hexdigest()
    with pytest.raises(UsbError, match=r"b.iso: .* does not fit in the stick's 16.0 MiB system region"):
        upgrade_image(make_iso(tmp_path / "b.iso", P3_START + SECTOR), stick, ESP)
    assert hashlib.sha256(stick.read_bytes()).hexdigest() == before
    # Exactly up to partition 3's start fits.
    upgrade_image(make_iso(tmp_path / "c.iso", P3_START), stick, ESP, verify_persistence=False)


@pytest.mark.parametrize(("head", "kind", "message"), [
    (ext4_head(b"data"), 0x83, "neither ext4 nor LUKS2 labelled 'persistence'"),
    (luks_head(b"persistence", version=1), 0x83, "neither ext4 nor LUKS2"),
    (luks_head(b"cryptdata"), 0x83, "neither ext4 nor LUKS2"),
    (bytes(4096), 0x83, "neither ext4 nor LUKS2"),
    (ext4_head(), 0x07, "partition 3 is not a Linux partition (type 0x07"),
])
def test_a_disk_that_is_not_our_stick_is_refused(tmp_path: Path, head: bytes, kind: int, message: str) -> None:
    stick = tmp_path / "stick.img"
    make_stick(stick, head, kind)
    before = hashlib.sha256(stick.read_bytes()).hexdigest()
    with pytest.raises(UsbError, match=message.replace("(", r"\(")) as caught:
        upgrade_image(make_iso(tmp_path / "b.iso", 8 * MiB), stick, ESP)
    assert "not a NeuralDrive stick" in str(caught.value)
    assert hashlib.sha256(stick.read_bytes()).hexdigest() == before


def test_no_partition_table_or_no_partition_3_is_refused(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(4 * MiB))
    with pytest.raises(UsbError, match="no MBR partition table"):
        upgrade_image(make_iso(tmp_path / "b.iso", MiB), blank, (1, 1))
    iso_only = tmp_path / "iso-only.img"
    make_stick(iso_only)
    with iso_only.open("r+b") as handle:
        handle.seek(MBR_ENTRIES + 32)
        handle.write(bytes(16))
    with pytest.raises(UsbError, match=r"type 0x00, 0 sectors"):
        upgrade_image(make_iso(tmp_path / "b.iso", MiB), iso_only, (1, 1))
    with pytest.raises(UsbError, match="cannot open the stick image"):
        upgrade_image(make_iso(tmp_path / "b.iso", MiB), tmp_path / "missing.img", (1, 1))


def test_an_esp_outside_the_new_iso_is_refused(tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    make_stick(stick)
    with pytest.raises(UsbError, match="EFI partition"):
        upgrade_image(make_iso(tmp_path / "b.iso", MiB), stick, ESP)  # the ESP would end at 3 MiB


def test_an_interrupted_upgrade_keeps_the_old_table_and_can_be_run_again(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stick = tmp_path / "stick.img"
    kept = make_stick(stick)
    old_head = stick.read_bytes()[:2 * SECTOR]
    iso = make_iso(tmp_path / "b.iso", 12 * MiB)
    real_fsync = os.fsync

    def power_cut(fd: int) -> None:  # the body is written, then the machine dies before the head
        real_fsync(fd)
        raise UsbWriteError("power cut")

    monkeypatch.setattr(upgrade.os, "fsync", power_cut)
    with pytest.raises(UsbWriteError, match="power cut"):
        upgrade_image(iso, stick, ESP, verify_persistence=False)
    monkeypatch.setattr(upgrade.os, "fsync", real_fsync)
    assert stick.read_bytes()[:2 * SECTOR] == old_head
    assert inspect_stick(os.open(stick, os.O_RDONLY), str(stick)).start == P3_START
    upgrade_image(iso, stick, ESP)
    assert region(stick, P3_START, P3_SIZE) == kept


def test_no_write_reaches_partition_3(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(UsbWriteError, match="past the system region"):
            upgrade._pwrite_all(fd, b"xx", 99, 100)
    finally:
        os.close(fd)


def test_persistence_kind_reads_the_labels() -> None:
    assert persistence_kind(ext4_head()) == "ext4" and persistence_kind(luks_head()) == "LUKS2"
    assert persistence_kind(ext4_head(b"persistence2")) is None and persistence_kind(b"") is None


def test_plan_keeps_entries_3_and_4_verbatim(tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    make_stick(stick)
    fd = os.open(stick, os.O_RDONLY)
    try:
        found = inspect_stick(fd, "stick")
    finally:
        os.close(fd)
    plan = plan_upgrade(found, 10 * MiB, ESP, "b.iso")
    assert plan.mbr_entries[32:] == stick.read_bytes()[MBR_ENTRIES + 32:MBR_ENTRIES + 64]
