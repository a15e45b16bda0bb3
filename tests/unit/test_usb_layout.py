"""The stick layout is decided whole before anything is written: sizes, the MBR entries, the 2 TiB limit."""

from __future__ import annotations

import pytest

from builder.usb.errors import UsbError
from builder.usb.layout import MBR_LIMIT, mbr_entry, plan_layout, plan_partition
from tests.fixtures.usb import GiB, MiB

ISO_SIZE = 330 * MiB
ESP = (2048, 4096)
TiB = 1 << 40


def test_plan_fills_the_disk_after_the_iso_aligned() -> None:
    plan = plan_partition(16 * GiB, ISO_SIZE)
    assert plan.start == 330 * MiB and plan.start % MiB == 0
    assert plan.end <= 16 * GiB - 34 * 512
    assert 16 * GiB - plan.end < 2 * MiB


@pytest.mark.parametrize(("spec", "size"), [("50%", 8026 * MiB), ("4G", 4 * GiB), ("2048M", 2 * GiB)])
def test_plan_sizes(spec: str, size: int) -> None:
    plan = plan_partition(16 * GiB, ISO_SIZE, spec)
    assert abs(plan.size - size) <= MiB


@pytest.mark.parametrize(("spec", "message"), [("200%", "1%-100%"), ("0%", "1%-100%"), ("20G", "only"),
                                               ("100M", "below the minimum"), ("lots", "use e.g. 16G")])
def test_plan_rejects(spec: str, message: str) -> None:
    with pytest.raises(UsbError, match=message):
        plan_partition(16 * GiB, ISO_SIZE, spec)


def test_target_too_small_for_any_persistence() -> None:
    with pytest.raises(UsbError, match="below the minimum persistence"):
        plan_layout(GiB, ISO_SIZE, ESP)


def test_layout_entries_are_debians_hybrid_mbr() -> None:
    layout = plan_layout(16 * GiB, ISO_SIZE, ESP)
    entries = [layout.mbr_entries[i:i + 16] for i in range(0, 64, 16)]
    assert entries[0] == mbr_entry(True, 0x00, 0, ISO_SIZE // 512)
    assert entries[1] == mbr_entry(False, 0xEF, *ESP)
    assert entries[2] == mbr_entry(False, 0x83, 330 * MiB // 512, layout.persistence.size // 512)
    assert entries[3] == bytes(16)
    assert layout.backup_gpt_offset == 16 * GiB - 33 * 512


@pytest.mark.parametrize("size", [3 * TiB, 8 * TiB])
def test_a_disk_over_2_tib_gets_persistence_the_mbr_can_address(size: int) -> None:
    layout = plan_layout(size, ISO_SIZE, ESP, "100%")  # the old code raised OverflowError after writing the ISO
    plan = layout.persistence
    assert plan.end <= MBR_LIMIT and MBR_LIMIT - plan.end < MiB
    assert int.from_bytes(layout.mbr_entries[32 + 8:32 + 12], "little") * 512 == plan.start
    assert int.from_bytes(layout.mbr_entries[32 + 12:32 + 16], "little") * 512 == plan.size
    assert layout.backup_gpt_offset == size - 33 * 512


def test_explicit_persistence_past_2_tib_is_a_layout_error() -> None:
    with pytest.raises(UsbError, match=r"^--persistence-size 2500G: only .* free after the ISO \(the MBR limit is "
                                       r"2 TiB\)$"):
        plan_layout(3 * TiB, ISO_SIZE, ESP, "2500G")


def test_mbr_entry_refuses_what_32_bits_cannot_hold() -> None:
    with pytest.raises(UsbError, match="outside the MBR's 32-bit range"):
        mbr_entry(False, 0x83, 2048, 1 << 32)


def test_esp_outside_the_iso_is_refused() -> None:
    with pytest.raises(UsbError, match=r"EFI partition .* is not inside"):
        plan_layout(16 * GiB, ISO_SIZE, (ISO_SIZE // 512, 4096))


def test_mbr_entry_layout() -> None:
    entry = mbr_entry(True, 0xEF, 2048, 4096)
    assert len(entry) == 16 and entry[0] == 0x80 and entry[4] == 0xEF
    assert int.from_bytes(entry[8:12], "little") == 2048 and int.from_bytes(entry[12:16], "little") == 4096
    assert entry[1:4] == bytes((32, 33, 0))  # LBA 2048 = cylinder 0, head 32, sector 33
    assert mbr_entry(False, 0x83, 40 << 21, 8)[1:4] == bytes((254, 0xFF, 0xFF))  # past CHS range
