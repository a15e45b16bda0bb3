"""Boot: the live system came up cleanly, from a read-only medium, as Debian 13."""

from __future__ import annotations

import json
from typing import Any

from builder.profile import load_profile


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


def test_the_image_names_its_release(host: Any, profile_name: str) -> None:
    """os-release(5): Debian's fields, plus IMAGE_ID/IMAGE_VERSION from the profile (hook 02-os-release);
    `neuraldrive status --json` reports the same version."""
    fields = dict(line.split("=", 1) for line in host.file("/usr/lib/os-release").content_string.splitlines()
                  if "=" in line)
    expected = load_profile(profile_name).image.version
    assert fields["ID"] == "debian" and fields["IMAGE_ID"] == "neuraldrive"
    assert fields["IMAGE_VERSION"].strip("'\"") == expected
    assert host.check_output("readlink -f /etc/os-release") == "/usr/lib/os-release"
    with host.sudo():
        status = json.loads(host.check_output("neuraldrive status --json"))
    assert status["version"] == expected
