"""The bench's reference ISO: plain `lb config` defaults plus only the suite, mirrors, architecture,
serial console and menu timeout; its cache key follows exactly those inputs; a cached one is reused."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.image import reference
from builder.image.reference import (
    MENU_TIMEOUT_HOOK,
    STOCK_APPEND,
    reference_args,
    reference_iso,
    reference_key,
)
from builder.profile import load_profile
from builder.profile.schema import Profile

LIVE_BUILD = Path("/usr/share/live/build")
LB = "1:20250505+deb13u1"


def with_mirrors(profile: Profile, **mirrors: str) -> Profile:
    moved = dataclasses.replace(profile.debian.mirrors, **mirrors)
    return dataclasses.replace(profile, debian=dataclasses.replace(profile.debian, mirrors=moved))


def test_arguments_are_the_profiles_suite_mirrors_and_a_serial_console() -> None:
    profile = with_mirrors(load_profile("test"), bootstrap="http://mirror.test/debian/",
                           security="http://mirror.test/debian-security/")
    args = reference_args(profile)
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options == {
        "--distribution": "trixie",
        "--architecture": "amd64",
        "--mirror-bootstrap": "http://mirror.test/debian/",
        "--mirror-chroot": profile.debian.mirrors.chroot,
        "--mirror-binary": profile.debian.mirrors.binary,
        "--mirror-chroot-security": "http://mirror.test/debian-security/",
        "--mirror-binary-security": "http://mirror.test/debian-security/",
        "--bootappend-live": "boot=live components quiet splash console=tty0 console=ttyS0,115200",
    }
    # Nothing of NeuralDrive: no package lists, areas, boot loaders, labels or names of its own.
    assert not any("neuraldrive" in arg.lower() for arg in args)


@pytest.mark.skipif(not (LIVE_BUILD / "functions/configuration.sh").is_file(), reason="live-build not installed")
def test_stock_append_is_live_builds_default() -> None:
    text = (LIVE_BUILD / "functions/configuration.sh").read_text()
    live_boot = text[text.index("\t\tlive-boot)"):]
    default = re.search(r'LB_BOOTAPPEND_LIVE="\$\{LB_BOOTAPPEND_LIVE:-([^}]*)\}"', live_boot)
    assert default is not None and default.group(1) == STOCK_APPEND


def test_key_changes_with_what_changes_the_image() -> None:
    profile = load_profile("test")
    base = reference_key(profile, LB)
    assert reference_key(profile, LB) == base
    assert reference_key(profile, "1:20260101") != base
    assert reference_key(with_mirrors(profile, chroot="http://127.0.0.1:9/debian/"), LB) != base
    assert reference_key(with_mirrors(profile, security="http://127.0.0.1:9/debian-security/"), LB) != base
    other_suite = dataclasses.replace(profile, debian=dataclasses.replace(profile.debian, suite="forky"))
    assert reference_key(other_suite, LB) != base


def test_key_ignores_what_only_neuraldrive_has(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile("test")
    base = reference_key(profile, LB)
    assert reference_key(load_profile("nvidia"), LB) == base  # same suite and mirrors: one reference for all
    more = dataclasses.replace(profile, packages=(*profile.packages, "htop"),
                               image=dataclasses.replace(profile.image, version="9.9.9", volume="OTHER"))
    assert reference_key(more, LB) == base
    monkeypatch.setattr(reference, "MENU_TIMEOUT_HOOK", MENU_TIMEOUT_HOOK.replace("timeout 10", "timeout 50"))
    assert reference_key(profile, LB) != base  # the hook reaches the image


def test_a_cached_reference_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile("test")
    builds: list[Path] = []

    def fake_build(profile: Profile, build_dir: Path, iso: Path) -> None:
        builds.append(build_dir)
        iso.parent.mkdir(parents=True, exist_ok=True)
        iso.write_bytes(b"iso")

    monkeypatch.setattr(reference, "live_build_version", lambda: LB)
    monkeypatch.setattr(reference, "check_host", lambda require_root: LB)
    monkeypatch.setattr(reference, "_build", fake_build)
    first = reference_iso(profile, tmp_path)
    assert not first.from_cache and first.iso == tmp_path / "reference" / f"{reference_key(profile, LB)}.iso"
    second = reference_iso(profile, tmp_path)
    assert second.from_cache and second.iso == first.iso and len(builds) == 1
    third = reference_iso(with_mirrors(profile, chroot="http://127.0.0.1:9/debian/"), tmp_path)
    assert not third.from_cache and third.iso != first.iso and len(builds) == 2


def stock_binary_tree(tmp_path: Path) -> Path:
    binary = tmp_path / "binary"
    (binary / "isolinux").mkdir(parents=True)
    (binary / "boot/grub").mkdir(parents=True)
    shutil.copy(LIVE_BUILD / "bootloaders/isolinux/isolinux.cfg", binary / "isolinux")
    for name in ("grub.cfg", "config.cfg"):
        shutil.copy(LIVE_BUILD / "bootloaders/grub-pc" / name, binary / "boot/grub")
    return binary


def run_hook(binary: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", MENU_TIMEOUT_HOOK], cwd=binary, capture_output=True, text=True, check=False)


@pytest.mark.skipif(not (LIVE_BUILD / "bootloaders/isolinux").is_dir(), reason="live-build not installed")
def test_menu_hook_gives_the_stock_menus_a_timeout(tmp_path: Path) -> None:
    binary = stock_binary_tree(tmp_path)
    assert run_hook(binary).returncode == 0
    isolinux = (binary / "isolinux/isolinux.cfg").read_text().splitlines()
    assert "timeout 10" in isolinux and "timeout 0" not in isolinux
    assert (binary / "boot/grub/config.cfg").read_text().splitlines()[-1] == "set timeout=1"


@pytest.mark.skipif(not (LIVE_BUILD / "bootloaders/isolinux").is_dir(), reason="live-build not installed")
def test_menu_hook_fails_on_menus_that_are_not_stock(tmp_path: Path) -> None:
    binary = stock_binary_tree(tmp_path)
    cfg = binary / "isolinux/isolinux.cfg"
    cfg.write_text(cfg.read_text().replace("timeout 0", "timeout 30"))
    assert run_hook(binary).returncode != 0
    assert "set timeout=1" not in (binary / "boot/grub/config.cfg").read_text()
