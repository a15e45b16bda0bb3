"""The target disk: recorded-shape sysfs/proc/dev trees under tmp_path, os.open watched or made to fail
with EBUSY. Every kind of user is refused with one line naming the device and what holds it."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.usb.disk import Disk, check_disk, claim, inspect_disk
from builder.usb.errors import UsbError
from tests.fixtures.usb import FakeHost, GiB, MiB, lsblk_sample, part

ISO_SIZE = 330 * MiB


def refused(host: FakeHost, match: str) -> str:
    disk = inspect_disk(str(host.dev / host.disk), host.system)
    with pytest.raises(UsbError, match=match) as caught:
        check_disk(disk, ISO_SIZE, host.system)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{host.dev / host.disk}: ")
    return message


def test_a_blank_stick_passes(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    disk = inspect_disk(str(host.dev / "sdz"), host.system)
    assert disk == Disk(name="sdz", path=str(host.dev / "sdz"), size=16 * GiB, model="SanDisk Ultra",
                        partitions=("sdz1", "sdz2"))
    check_disk(disk, ISO_SIZE, host.system)
    assert "SanDisk Ultra, 16.0 GiB, sdz1, sdz2" in disk.describe()


def test_partition_instead_of_disk(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    with pytest.raises(UsbError, match=r"is a partition; give the whole disk"):
        inspect_disk(str(host.dev / "sdz1"), host.system)


def test_not_a_block_device(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    with pytest.raises(UsbError, match="not a block device"):
        inspect_disk("/dev/nonexistent-disk", host.system)


def test_rom_drive_is_not_a_disk(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, disk="sr0", partitions=(), kind="rom")
    refused(host, "is a rom, not a whole disk")


def test_too_small(tmp_path: Path) -> None:
    refused(FakeHost(tmp_path, size=GiB), "too small")


def test_mounted_partition_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, lsblk_children=[part("sdz1", "/media/stick"), part("sdz2")])
    refused(host, r"mounted filesystems \(/media/stick\)")


def test_root_filesystem_behind_lvm_is_refused(tmp_path: Path) -> None:
    lvm = {"name": "vg-root", "path": "/dev/mapper/vg-root", "size": GiB, "type": "lvm", "model": None,
           "mountpoints": ["/"], "children": []}
    refused(FakeHost(tmp_path, lsblk_children=[part("sdz1"), part("sdz2", None, [lvm])]), r"mounted filesystems \(/\)")


def test_mount_lsblk_missed_is_found_in_proc_mounts(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    (host.proc / "self/mounts").write_text("/dev/sdz1 /srv/data ext4 rw 0 0\n")
    refused(host, r"sdz1 is in use by a filesystem mounted on /srv/data")


def test_active_lvm_physical_volume_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.hold("sdz2", "dm-1", "vg0-data", "LVM-abcdefABCDEF0123456789abcdefABCDEF0123456789")
    refused(host, r"sdz2 is in use by dm-1 \(LVM volume 'vg0-data'\)")


def test_open_luks_mapping_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.hold("sdz1", "dm-0", "cryptdata", "CRYPT-LUKS2-0123456789abcdef0123456789abcdef-cryptdata")
    refused(host, r"sdz1 is in use by dm-0 \(LUKS mapping 'cryptdata'\)")


def test_luks_on_the_whole_disk_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, partitions=())
    host.hold("sdz", "dm-4", "secret", "CRYPT-LUKS1-00-secret")
    message = refused(host, r"is in use by dm-4 \(LUKS mapping 'secret'\)")
    assert message == f"{host.dev / 'sdz'}: is in use by dm-4 (LUKS mapping 'secret'); stop using it first"


def test_raid_member_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.hold("sdz1", "md0", md_level="raid1")
    (host.proc / "mdstat").write_text("Personalities : [raid1]\nmd0 : active raid1 sdz1[1] sdy1[0]\n"
                                      "      1046528 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n")
    refused(host, r"sdz1 is in use by md0 \(RAID raid1 array\)")


def test_inactive_raid_member_only_in_mdstat_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    (host.proc / "mdstat").write_text("Personalities : \nmd127 : inactive sdz2[0](S)\n      1046528 blocks\n")
    refused(host, r"sdz2 is in use by md127")


def test_swap_partition_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    (host.proc / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n/dev/sdz2  partition\t2097148\t0\t-2\n")
    refused(host, r"sdz2 is in use by swap")


def test_swap_through_a_dev_symlink_is_refused(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    (host.dev / "disk/by-uuid").mkdir(parents=True)
    (host.dev / "disk/by-uuid/1234").symlink_to("../../sdz1")
    (host.proc / "swaps").write_text("Filename Type Size Used Priority\n/dev/disk/by-uuid/1234 partition 2 0 -2\n")
    refused(host, r"sdz1 is in use by swap")


def test_swap_partition_lsblk_shows_as_swap_is_named_as_swap(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, lsblk_children=[part("sdz1"), part("sdz2", "[SWAP]")])
    (host.proc / "swaps").write_text("Filename Type Size Used Priority\n/dev/sdz2 partition 1 0 -2\n")
    refused(host, r"sdz2 is in use by swap; stop using it first$")


OpenFn = Callable[..., int]


def watch_open(monkeypatch: pytest.MonkeyPatch, busy: set[str]) -> list[tuple[str, int]]:
    """os.open as usb_disk calls it: record (name, flags); EBUSY for the names in `busy`."""
    calls: list[tuple[str, int]] = []
    real: OpenFn = os.open

    def fake(path: os.PathLike[str] | str, flags: int, *args: object, **kwargs: object) -> int:
        calls.append((Path(path).name, flags))
        if Path(path).name in busy:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)  # the os module usb_disk calls
    return calls


def test_claim_probes_every_partition_then_holds_the_whole_disk(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(tmp_path)
    disk = inspect_disk(str(host.dev / "sdz"), host.system)
    calls = watch_open(monkeypatch, busy=set())
    with claim(disk, host.system) as fd:
        assert [name for name, _ in calls] == ["sdz1", "sdz2", "sdz"]
        assert all(flags & os.O_EXCL and flags & os.O_RDWR for _, flags in calls)
        os.fstat(fd)  # held open for the whole write
        os.pwrite(fd, b"written through the claim", 0)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert (host.dev / "sdz").read_bytes() == b"written through the claim"


def test_zfs_member_is_refused_on_ebusy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ZFS leaves no holder link: only the exclusive open tells, and the imported pools are named.
    host = FakeHost(tmp_path)
    (host.proc / "spl/kstat/zfs/tank").mkdir(parents=True)
    disk = inspect_disk(str(host.dev / "sdz"), host.system)
    check_disk(disk, ISO_SIZE, host.system)
    calls = watch_open(monkeypatch, busy={"sdz1"})
    expected = r"sdz1 is held exclusively by something else \(a ZFS pool \(tank imported\)"
    with pytest.raises(UsbError, match=expected), claim(disk, host.system):
        pytest.fail("claimed a busy disk")
    assert [name for name, _ in calls] == ["sdz1"]  # never got to open the disk for writing


def test_holder_appearing_after_the_check_is_named_on_ebusy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(tmp_path)
    disk = inspect_disk(str(host.dev / "sdz"), host.system)
    check_disk(disk, ISO_SIZE, host.system)
    host.hold("sdz", "dm-2", "late", "CRYPT-PLAIN-late")  # someone opened it between check and claim
    watch_open(monkeypatch, busy={"sdz"})
    expected = rf"^{host.dev / 'sdz'}: is in use by dm-2 \(LUKS mapping 'late'\)"
    with pytest.raises(UsbError, match=expected), claim(disk, host.system):
        pytest.fail("claimed a busy disk")


def test_unexplained_ebusy_is_still_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(tmp_path, partitions=())
    disk = inspect_disk(str(host.dev / "sdz"), host.system)
    watch_open(monkeypatch, busy={"sdz"})
    expected = r"sdz: is held exclusively by something else .*or a program\); release it"
    with pytest.raises(UsbError, match=expected), claim(disk, host.system):
        pytest.fail("claimed a busy disk")


def test_lsblk_sample_helper_shape() -> None:
    assert lsblk_sample("sdz", GiB)["blockdevices"]
