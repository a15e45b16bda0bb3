"""Logs that survive (issue 14): on the persistence partition the journal outlives a reboot, within
seed 004's limits; `neuraldrive logs` finds the previous boot's lines."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.image.helpers import save_state


def _journal_source(host: Any) -> str:
    source = host.check_output("findmnt -n -o SOURCE /var/log/journal || true")
    return source.strip()


def test_the_journal_is_on_the_persistence_partition(host: Any) -> None:
    source = _journal_source(host)
    assert source, "/var/log/journal is not a mount (persistence.conf bind missing?)"
    device = source.split("[")[0]
    assert host.check_output(f"lsblk -n -o LABEL {device}").strip() == "persistence", source
    with host.sudo():
        header = host.check_output("journalctl --header -n 0 | grep -E '^File path' | head -1")
    assert "/var/log/journal/" in header


def test_log_a_marker(host: Any) -> None:
    marker = f"neuraldrive-journal-marker-{time.time_ns()}"
    host.check_output(f"logger -t neuraldrive-test {marker}")
    with host.sudo():
        # journald writes asynchronously; sync makes the marker reach the disk before the reboot.
        host.check_output("journalctl --sync && sync")
        assert marker in host.check_output("journalctl -b -t neuraldrive-test --no-pager -o cat")
    save_state({"journal_marker": marker, "journal_boot_id": host.file("/proc/sys/kernel/random/boot_id")
                .content_string.strip()})


@pytest.mark.after_reboot
def test_the_marker_survives_the_reboot(host: Any, state: dict[str, Any]) -> None:
    assert "journal_marker" in state, "the first boot's journal test did not run"
    boot_id = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    assert boot_id != state["journal_boot_id"]
    with host.sudo():
        previous = host.check_output("journalctl -b -1 -t neuraldrive-test --no-pager -o cat")
        through_cli = host.check_output("neuraldrive logs -n 100000 2>&1 | grep neuraldrive-journal-marker || true")
        boots = host.check_output("journalctl --list-boots --no-pager | wc -l")
    assert state["journal_marker"] in previous
    assert state["journal_marker"] in through_cli
    assert int(boots) >= 2


@pytest.mark.after_reboot
def test_journald_runs_with_the_limits(host: Any) -> None:
    with host.sudo():
        conf = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    for setting in ("SystemMaxUse=2G", "SystemMaxFileSize=100M", "MaxRetentionSec=7d"):
        assert setting in conf
