"""Writing the stick, the command's order: every refusal before a byte is written, the O_EXCL claim held from
the confirmation to the end of the write. The write itself: test_usb_write.py."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_usb_disk import watch_open
from test_usb_models import make_store

import build
from builder.usb import command as usb_command
from builder.usb import write as usb
from builder.usb.command import UsbRequest, run_usb
from builder.usb.errors import UsbError
from tests.fixtures.usb import ESP, FakeHost, fake_iso

TiB = 1 << 40


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_usb past its root check, with the ISO's EFI partition known without sfdisk."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(usb_command, "esp_extent", lambda iso: ESP)


def never(*args: object) -> bytes:
    pytest.fail("asked the user although the request was refused")


def test_cli_needs_exactly_one_target(tmp_path: Path) -> None:
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"x")
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(iso)])
    assert result.exit_code == 2 and "exactly one of --device" in result.output


@pytest.mark.usefixtures("as_root")
def test_cli_bad_models_are_refused_before_the_image_exists(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    (store / "blobs" / f"sha256-{'a' * 64}").mkdir()
    image = tmp_path / "stick.img"
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(fake_iso(tmp_path)), "--image", str(image),
                                            "--size", "2G", "--models", str(store)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {store}/blobs/sha256-{'a' * 64}: is a directory, "
                                                  f"not a regular file"]
    assert not image.exists()


@pytest.mark.usefixtures("as_root")
def test_cli_layout_past_the_mbr_limit_is_refused_before_the_image_exists(tmp_path: Path) -> None:
    image = tmp_path / "stick.img"
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(fake_iso(tmp_path)), "--image", str(image),
                                            "--size", "3T", "--persistence-size", "2500G"])
    assert result.exit_code == 2, result.output
    assert "the MBR limit is 2 TiB" in result.output and len(result.output.strip().splitlines()) == 1
    assert not image.exists()


@pytest.mark.usefixtures("as_root")
def test_image_path_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "stick.img").symlink_to(victim)
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(fake_iso(tmp_path)), "--image",
                                            str(tmp_path / "stick.img"), "--size", "2G", "--yes"])
    assert result.exit_code == 2 and "cannot create the image" in result.output, result.output
    assert victim.read_bytes() == b"keep"


def device_request(tmp_path: Path, host: FakeHost, **changes: object) -> UsbRequest:
    fields: dict[str, object] = {"iso": fake_iso(tmp_path), "device": str(host.dev / host.disk), "yes": True}
    fields.update(changes)
    return UsbRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.usefixtures("as_root")
def test_disk_over_2_tib_layout_error_leaves_it_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(tmp_path, size=3 * TiB)
    (host.dev / "sdz").write_bytes(b"old contents")
    calls = watch_open(monkeypatch, busy=set())
    with pytest.raises(UsbError, match=r"^--persistence-size 2500G: .*the MBR limit is 2 TiB"):
        run_usb(device_request(tmp_path, host, persistence_size="2500G"), never, never, True, host.system)
    assert calls == [] and (host.dev / "sdz").read_bytes() == b"old contents"


def _swap(host: FakeHost) -> None:
    (host.proc / "swaps").write_text("Filename Type Size Used Priority\n/dev/sdz2 partition 1 0 -2\n")


HOLDERS: list[tuple[Callable[[FakeHost], None], str]] = [
    (lambda h: h.hold("sdz2", "dm-0", "cryptdata", "CRYPT-LUKS2-x-cryptdata"), r"sdz2 is in use by dm-0 \(LUKS "
                                                                                r"mapping 'cryptdata'\)"),
    (lambda h: h.hold("sdz1", "dm-3", "vg-lv", "LVM-x"), r"sdz1 is in use by dm-3 \(LVM volume 'vg-lv'\)"),
    (lambda h: h.hold("sdz1", "md1", md_level="raid5"), r"sdz1 is in use by md1 \(RAID raid5 array\)"),
    (_swap, r"sdz2 is in use by swap"),
]


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize(("setup", "message"), HOLDERS)
def test_disk_in_use_is_refused_before_anything_is_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          setup: Callable[[FakeHost], None], message: str) -> None:
    host = FakeHost(tmp_path)
    setup(host)
    calls = watch_open(monkeypatch, busy=set())
    with pytest.raises(UsbError, match=message):
        run_usb(device_request(tmp_path, host), never, never, True, host.system)
    assert calls == []


@pytest.mark.usefixtures("as_root")
def test_zfs_member_is_refused_by_the_exclusive_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(tmp_path)
    (host.proc / "spl/kstat/zfs/tank").mkdir(parents=True)
    watch_open(monkeypatch, busy={"sdz2"})
    with pytest.raises(UsbError, match=r"sdz2 is held exclusively by something else \(a ZFS pool \(tank"):
        run_usb(device_request(tmp_path, host, yes=False), never, never, True, host.system)


@pytest.mark.usefixtures("as_root")
def test_no_confirmation_without_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(tmp_path)
    calls = watch_open(monkeypatch, busy=set())
    with pytest.raises(UsbError, match="without confirmation: pass --yes"):
        run_usb(device_request(tmp_path, host, yes=False), never, never, False, host.system)
    assert calls == []


@pytest.mark.usefixtures("as_root")
def test_the_claim_is_held_from_the_question_to_the_end_of_the_write(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(tmp_path)
    calls = watch_open(monkeypatch, busy=set())
    seen: dict[str, object] = {}

    def confirm(question: str) -> None:
        seen["question"] = question
        seen["opened_when_asked"] = [name for name, _ in calls]

    def fake_write(iso: Path, fd: int, target: Path, *rest: object) -> usb.WriteReport:
        os.fstat(fd)  # the claimed fd is still open
        seen["fd"], seen["target"] = fd, target
        return usb.WriteReport(target=str(target), iso_sha256="", written_bytes=0, write_seconds=0,
                               verify_seconds=0)

    monkeypatch.setattr(usb_command, "write_stick", fake_write)
    run_usb(device_request(tmp_path, host, yes=False), confirm, never, True, host.system)
    assert seen["opened_when_asked"] == ["sdz1", "sdz2", "sdz"]  # claimed before asking
    assert calls[-1][1] & os.O_EXCL and len(calls) == 3  # written through that one handle
    assert seen["target"] == host.dev / "sdz" and f"to {host.dev / 'sdz'}?" in str(seen["question"])
    with pytest.raises(OSError) as closed:
        os.fstat(int(str(seen["fd"])))
    assert closed.value.errno == errno.EBADF
