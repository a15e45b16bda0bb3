"""`usb --upgrade` through the command and the CLI (refusals, the persistence hash, a device asked for under the
claim), and the system region a first write reserves so that a later upgrade fits."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import build
from builder.profile import load_profile
from builder.proof import upgrade as proof
from builder.usb import command as usb_command
from builder.usb import write as usb_write
from builder.usb.command import UsbRequest, plan_stick, run_usb
from builder.usb.errors import UsbError
from builder.usb.layout import default_system_size
from builder.usb.upgrade import UpgradeReport
from tests.fixtures.usb import ESP, FakeHost, GiB, MiB
from tests.fixtures.usb_stick import P3_SIZE, P3_START, make_iso, make_stick, region


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
