"""The release a device runs: hook 02-os-release writes os-release(5)'s IMAGE_ID/IMAGE_VERSION into
Debian's /usr/lib/os-release; neuraldrive.osrelease reads them back for the status function."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from builder.image.render import ROOT
from builder.profile import load_profile
from tests.fixtures.gpu import FakeRunner, lib
from tests.unit.test_inimage_units import render
from tests.unit.test_status import RecordedClient

osrelease = lib("osrelease")
status = lib("status")
status_text = lib("status_text")

HOOK = ROOT / "hooks/02-os-release.hook.chroot.j2"
DEBIAN = ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\n'
          'VERSION="13 (trixie)"\nVERSION_CODENAME=trixie\nID=debian\nHOME_URL="https://www.debian.org/"\n')


def run_hook(tmp_path: Path, version: str) -> Path:
    """The rendered hook, run twice against a copy of Debian's os-release (the path swapped for it)."""
    profile = load_profile("test")
    profile = dataclasses.replace(profile, image=dataclasses.replace(profile.image, version=version))
    target = tmp_path / "os-release"
    if not target.exists():
        target.write_text(DEBIAN)
    script = render(HOOK, profile).replace("release=/usr/lib/os-release", f"release={target}")
    script = script.replace("link=/etc/os-release", f"link={tmp_path / 'etc-os-release'}")
    assert f"release={target}" in script and str(tmp_path / "etc-os-release") in script
    for _ in range(2):
        subprocess.run(["sh", "-c", script], check=True)
    return target


def test_the_hook_adds_image_id_and_version_once_and_keeps_debians_fields(tmp_path: Path) -> None:
    target = run_hook(tmp_path, "1.2.3~rc1")
    # "~" is quoted, as os-release(5) asks of anything outside A-Z a-z 0-9
    assert target.read_text() == DEBIAN + "IMAGE_ID=neuraldrive\nIMAGE_VERSION='1.2.3~rc1'\n"
    assert osrelease.image_version(target) == "1.2.3~rc1"
    assert osrelease.os_release_fields(target)["PRETTY_NAME"] == "Debian GNU/Linux 13 (trixie)"
    # A rebuild with another version replaces it (release B over release A).
    assert osrelease.image_version(run_hook(tmp_path, "2.0.0")) == "2.0.0"
    assert target.read_text().count("IMAGE_VERSION=") == 1
    assert os.readlink(tmp_path / "etc-os-release") == "../usr/lib/os-release"


def test_the_hook_refuses_a_missing_os_release(tmp_path: Path) -> None:
    script = render(HOOK, load_profile("test")).replace("release=/usr/lib/os-release",
                                                        f"release={tmp_path / 'none'}")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "is not a file" in result.stderr


@pytest.mark.parametrize("text", ["", DEBIAN, DEBIAN + "IMAGE_ID=other\nIMAGE_VERSION=9\n",
                                  DEBIAN + "IMAGE_ID=neuraldrive\n", "IMAGE_ID=neuraldrive\nIMAGE_VERSION='\n"])
def test_no_version_unless_a_neuraldrive_image_names_one(tmp_path: Path, text: str) -> None:
    (tmp_path / "os-release").write_text(text)
    assert osrelease.image_version(tmp_path / "os-release") is None
    assert osrelease.image_version(tmp_path / "missing") is None


def test_quoted_values_are_read_as_os_release_says(tmp_path: Path) -> None:
    (tmp_path / "os-release").write_text("# comment\nIMAGE_ID=\"neuraldrive\"\nIMAGE_VERSION='0.2.0+b1'\n")
    assert osrelease.image_version(tmp_path / "os-release") == "0.2.0+b1"


def test_status_reports_the_version(tmp_path: Path) -> None:
    target = run_hook(tmp_path, "0.3.1")
    state = status.collect(status.Sources(RecordedClient(), tmp_path / "gpu.env", tmp_path, FakeRunner({}),
                                          os_release=target))
    assert state.version == "0.3.1" and state.to_dict()["version"] == "0.3.1"
    assert "Release   NeuralDrive 0.3.1" in status_text.render_text(state, "http://127.0.0.1:11434")
    unknown = status.collect(status.Sources(RecordedClient(), tmp_path / "gpu.env", tmp_path, FakeRunner({}),
                                            os_release=tmp_path / "missing"))
    assert unknown.version is None
    assert "Release   NeuralDrive unknown" in status_text.render_text(unknown, "http://127.0.0.1:11434")
