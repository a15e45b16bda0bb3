"""Boot: the live system came up cleanly, from a read-only medium, as Debian 13."""

from __future__ import annotations

from typing import Any


def test_no_failed_units(host: Any) -> None:
    failed = host.check_output("systemctl --failed --no-legend --plain")
    assert failed.strip() == "", failed


def test_system_is_running(host: Any) -> None:
    assert host.run("systemctl is-system-running").stdout.strip() == "running"


def test_kernel_command_line(host: Any) -> None:
    cmdline = host.file("/proc/cmdline").content_string.split()
    assert "boot=live" in cmdline
    assert "live-config.noautologin" in cmdline
    assert "persistence" in cmdline
    assert "console=ttyS0,115200" in cmdline


def test_debian_trixie(host: Any) -> None:
    assert host.system_info.distribution == "debian"
    assert host.system_info.codename == "trixie"


def test_live_medium_is_read_only(host: Any) -> None:
    options = host.check_output("findmnt -n -o OPTIONS /run/live/medium")
    assert options.split(",")[0] == "ro"
    root_fs = host.check_output("findmnt -n -o FSTYPE /run/live/rootfs/filesystem.squashfs")
    assert root_fs == "squashfs"


def test_hostname_from_profile(host: Any) -> None:
    assert host.check_output("hostname") == "neuraldrive"


def test_no_cache_rebuilds_at_boot(host: Any) -> None:
    """The image is stamped as updated: ConditionNeedsUpdate= keeps the rebuild units from running
    on every live boot (they sit before sysinit.target)."""
    for unit in ("ldconfig.service", "systemd-journal-catalog-update.service", "systemd-update-done.service"):
        shown = host.check_output(f"systemctl show -p ConditionResult -p ExecMainStartTimestampMonotonic {unit}")
        assert "ConditionResult=no" in shown, f"{unit} ran at boot:\n{shown}"
