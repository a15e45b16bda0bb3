"""Every in-image Python program answers --help (exit 0) with what an operator needs from it: its
options and the settings it reads."""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.gpu import clean_env, program

HELP_MENTIONS = {
    "gpu-detect": ("--root", "--sysfs", "--lspci-file", "--dry-run"),
    "gpu-tune": ("NEURALDRIVE_GPU_POWER_LIMIT",),
    "gpu-idle": ("NEURALDRIVE_IDLE_TIMEOUT", "--once"),
    "healthcheck": ("--restart-engine",),
    "issue-refresh": ("/etc/issue",),
    "status-page": ("/run/neuraldrive/page/status.json", "NEURALDRIVE_STATUS_INTERVAL", "--once"),
}


@pytest.mark.parametrize(("name", "mentions"), HELP_MENTIONS.items())
def test_help(name: str, mentions: tuple[str, ...]) -> None:
    result = subprocess.run([*program(f"usr/lib/neuraldrive/{name}"), "--help"],
                            env=clean_env(), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    for mention in mentions:
        assert mention in result.stdout, mention
