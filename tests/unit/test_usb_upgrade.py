"""`usb --upgrade`: only our sticks, only an ISO that fits before partition 3, and partition 3 byte for
byte as it was (checked here with its own sha256, not the tool's). Disk-image files stand in for sticks."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_usb_fakes import FakeHost

import build
from builder.profile import load_profile
from builder.proof import upgrade as proof
from builder.usb import command as usb_command
from builder.usb import upgrade
from builder.usb import write as usb_write
from builder.usb.command import UsbRequest, plan_stick, run_usb
from builder.usb.errors import UsbError, UsbWriteError
from builder.usb.layout import MBR_ENTRIES, SECTOR, default_system_size, mbr_entry
from builder.usb.upgrade import UpgradeReport, inspect_stick, persistence_kind, plan_upgrade, upgrade_image

MiB = 1 << 20
P3_START = 16 * MiB
P3_SIZE = 8 * MiB
DISK = P3_START + P3_SIZE + MiB
ESP = (2048, 4096)  # sectors: 1 MiB in, 2 MiB long


def ext4_head(label: bytes = b"persistence") -> bytes:
    head = bytearray(os.urandom(4096))
    head[1024 + 56:1024 + 58] = (0xEF53).to_bytes(2, "little")
    head[1024 + 120:1024 + 136] = label.ljust(16, b"\0")
    return bytes(head)


def luks_head(label: bytes = b"persistence", version: int = 2) -> bytes:
    head = bytearray(os.urandom(4096))
    head[:8] = b"LUKS\xba\xbe" + version.to_bytes(2, "big")
    head[24:72] = label.ljust(48, b"\0")
    return bytes(head)


def make_stick(path: Path, head: bytes | None = None, kind: int = 0x83, old_iso: int = 10 * MiB) -> str:
    """A stick as build.py usb leaves it: old ISO bytes, MBR 1/2/3, random persistence data; returns
    partition 3's sha256."""
    with path.open("wb") as handle:
        handle.truncate(DISK)
        handle.write(os.urandom(old_iso))
        handle.seek(MBR_ENTRIES)
        handle.write(mbr_entry(True, 0, 0, old_iso // SECTOR) + mbr_entry(False, 0xEF, *ESP)
                     + mbr_entry(False, kind, P3_START // SECTOR, P3_SIZE // SECTOR) + bytes(16) + b"\x55\xaa")
        handle.seek(SECTOR)
        handle.write(bytes(SECTOR))
        handle.seek(P3_START)
        handle.write((head if head is not None else ext4_head()) + os.urandom(P3_SIZE - 4096))
    return region(path, P3_START, P3_SIZE)


def region(path: Path, start: int, size: int) -> str:
    with path.open("rb") as handle:
        handle.seek(start)
        return hashlib.sha256(handle.read(size)).hexdigest()


def make_iso(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


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


GiB = 1 << 30


def test_the_default_system_region_is_twice_the_iso_and_at_least_4_gib() -> None:
    assert default_system_size(330 * MiB) == 4 * GiB
    assert default_system_size(3 * GiB) == 6 * GiB
    assert default_system_size(2 * GiB + GiB // 2 + 1) == 6 * GiB  # whole GiB, rounded up


def test_a_first_write_reserves_the_system_region(capsys: pytest.CaptureFixture[str]) -> None:
    request = UsbRequest(iso=Path("a.iso"))
    layout = plan_stick(request, 16 * GiB, 330 * MiB, ESP)
    assert layout.persistence.start == 4 * GiB and "System region: 4.0 GiB" in capsys.readouterr().err
    # A stick too small for the default: the ISO only, said so.
    small = plan_stick(request, 4 * GiB, 330 * MiB, ESP)
    assert small.persistence.start == 330 * MiB and "no room on 4.0 GiB" in capsys.readouterr().err
    explicit = plan_stick(replace(request, system_size="1G"), 16 * GiB, 330 * MiB, ESP)
    assert explicit.persistence.start == GiB
    with pytest.raises(UsbError, match=r"smaller than the 330.0 MiB ISO"):
        plan_stick(replace(request, system_size="100M"), 16 * GiB, 330 * MiB, ESP)
    with pytest.raises(UsbError, match=r"only .* free after the 15.0 GiB system region"):
        plan_stick(replace(request, system_size="15G"), 16 * GiB, 330 * MiB, ESP)


@pytest.mark.parametrize(("extra", "named"), [
    ({"encrypt": True}, "--encrypt"), ({"size": "8G"}, "--size"), ({"persistence_size": "50%"}, "--persistence-size"),
    ({"system_size": "8G"}, "--system-size"), ({"authorized_keys": Path("k.pub")}, "--authorized-keys"),
])
def test_an_upgrade_refuses_what_would_change_the_layout(tmp_path: Path, extra: dict[str, object], named: str) -> None:
    stick = tmp_path / "stick.img"
    make_stick(stick)
    before = hashlib.sha256(stick.read_bytes()).hexdigest()
    request = UsbRequest(iso=make_iso(tmp_path / "b.iso", MiB), image=stick, upgrade=True, **extra)  # type: ignore[arg-type]
    with pytest.raises(UsbError, match=f"--upgrade keeps the persistence partition .*{named}"):
        run_usb(request, confirm=lambda q: pytest.fail("asked"), ask_passphrase=lambda: b"", interactive=False)
    assert hashlib.sha256(stick.read_bytes()).hexdigest() == before


def test_the_command_upgrades_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usb_command, "esp_extent", lambda iso: ESP)
    stick = tmp_path / "stick.img"
    kept = make_stick(stick)
    request = UsbRequest(iso=make_iso(tmp_path / "b.iso", 12 * MiB), image=stick, upgrade=True,
                         verify_persistence=True)
    report = run_usb(request, confirm=lambda q: pytest.fail("asked"), ask_passphrase=lambda: b"", interactive=False)
    assert isinstance(report, UpgradeReport) and report.persistence_after == kept
    assert f"persistence sha256 {kept} before and after" in report.summary()
    with pytest.raises(UsbError, match="--verify-persistence goes with --upgrade"):
        run_usb(replace(request, upgrade=False), confirm=print, ask_passphrase=lambda: b"", interactive=False)


def test_cli_upgrade_of_an_image_prints_the_persistence_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usb_command, "esp_extent", lambda iso: ESP)
    stick = tmp_path / "stick.img"
    kept = make_stick(stick)
    iso = make_iso(tmp_path / "b.iso", 12 * MiB)
    result = CliRunner().invoke(build.cli, ["usb", "--upgrade", "--iso", str(iso), "--image", str(stick),
                                            "--verify-persistence"])
    assert result.exit_code == 0, result.output
    assert f"persistence sha256 {kept} before and after" in result.output
    refused = CliRunner().invoke(build.cli, ["usb", "--upgrade", "--iso", str(iso), "--image", str(stick),
                                             "--encrypt"])
    assert refused.exit_code == 2 and "error: --upgrade keeps the persistence partition" in refused.output
    assert region(stick, P3_START, P3_SIZE) == kept


def test_the_image_tests_own_hash_finds_partition_3_through_sfdisk(tmp_path: Path) -> None:
    """builder/proof/upgrade.py checks the tool independently: its hash of partition 3 must be the real one."""
    stick = tmp_path / "stick.img"
    kept = make_stick(stick)
    assert proof.partition_3_sha256(stick) == kept
    a = Path("out/neuraldrive-0.1.0-test-amd64.iso")
    assert proof.release_b_iso(a, load_profile("test")) == Path("out/neuraldrive-0.1.0+upgrade-test-amd64.iso")


def test_authorized_keys_are_checked_before_the_image_exists_and_reach_the_partition(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(usb_command, "esp_extent", lambda iso: ESP)
    iso, image = make_iso(tmp_path / "a.iso", 12 * MiB), tmp_path / "stick.img"
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
                       "-----END OPENSSH PRIVATE KEY-----\n")
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(iso), "--image", str(image), "--size", "2G",
                                            "--authorized-keys", str(private)])
    assert result.exit_code == 2 and f"error: {private}:1:" in result.output, result.output
    assert not image.exists()
    public = tmp_path / "admin.pub"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@host\n")
    seen: dict[str, object] = {}

    def fake_write(*args: object) -> object:
        seen["keys"], seen["layout"] = args[7], args[3]
        return usb_write.WriteReport(target="x", iso_sha256="", written_bytes=0, write_seconds=0, verify_seconds=0)

    monkeypatch.setattr(usb_command, "write_stick", fake_write)
    run_usb(UsbRequest(iso=iso, image=image, size="8G", authorized_keys=public), confirm=print,
            ask_passphrase=lambda: b"", interactive=False)
    assert seen["keys"] == [public.read_text().strip()]
    assert seen["layout"].persistence.start == 4 * GiB  # type: ignore[attr-defined]  # the default system region


def test_a_device_upgrade_asks_and_refuses_a_mounted_stick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same disk safety as a fresh write: users refused, the question asked under the claim."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(usb_command, "esp_extent", lambda iso: ESP)
    host = FakeHost(tmp_path / "host", partitions=("sdz1", "sdz2", "sdz3"), size=2 * GiB)
    kept = make_stick(host.dev / "sdz")
    iso = make_iso(tmp_path / "b.iso", 12 * MiB)
    asked: list[str] = []
    request = UsbRequest(iso=iso, device=str(host.dev / "sdz"), upgrade=True)
    with pytest.raises(UsbError, match="without confirmation: pass --yes"):
        run_usb(request, confirm=asked.append, ask_passphrase=lambda: b"", interactive=False, system=host.system)
    report = run_usb(request, confirm=asked.append, ask_passphrase=lambda: b"", interactive=True, system=host.system)
    assert asked == [f"Write b.iso over the system region of {host.dev / 'sdz'}?"]
    assert isinstance(report, UpgradeReport) and region(host.dev / "sdz", P3_START, P3_SIZE) == kept
    mounts = host.proc / "self/mounts"
    mounts.write_text(mounts.read_text() + "/dev/sdz3 /media/persistence ext4 rw 0 0\n")
    before = hashlib.sha256((host.dev / "sdz").read_bytes()).hexdigest()
    with pytest.raises(UsbError, match="sdz3 is in use by a filesystem mounted on /media/persistence"):
        run_usb(replace(request, yes=True), confirm=asked.append, ask_passphrase=lambda: b"", interactive=True,
                system=host.system)
    assert hashlib.sha256((host.dev / "sdz").read_bytes()).hexdigest() == before
