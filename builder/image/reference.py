"""The bench's reference image: a stock Debian live ISO from plain `lb config` defaults (live-build's
own package set, boot loaders, menus and `boot=live components quiet splash`), with only what makes
it comparable to NeuralDrive and bootable in the QEMU harness: the profile's suite, mirrors and
architecture, the kernel console on ttyS0 as well (the harness reads the login prompt there), and a
1 s boot-menu timeout (stock menus wait for a key forever; NeuralDrive's waits 1 s). Nothing of
NeuralDrive goes in.

Built by stock `lb build` with the project's runner, once: the ISO is cached under the key the
package layer uses (cache.config_key: live-build's version and every `lb config` argument, mirrors
included) plus the menu hook, so later bench runs reuse it. No profile pins a snapshot of the
mirror: a cached reference keeps the packages of the day it was built (bench.json records when).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.console import complete_step
from builder.files import exclusive_lock
from builder.image import cache
from builder.image.builddir import check_host, find_iso, live_build_version, release_mounts, remove_build_dir
from builder.image.lbconfig import BINARY, LbOption
from builder.image.livebuild import LiveBuildRunner, Phase, PyStep
from builder.profile.schema import Profile

# live-build's own default for live-boot images (functions/configuration.sh; a unit test compares).
STOCK_APPEND = "boot=live components quiet splash"
# The consoles NeuralDrive's command line names (lbconfig.boot_append), the last one /dev/console:
# systemd then starts a getty on ttyS0, whose login prompt the harness waits for.
SERIAL_CONSOLES = "console=tty0 console=ttyS0,115200"
REFERENCE_FORMAT = 1
KEEP_REFERENCES = 2
# Run by `lb binary` in binary/ after the boot loaders are configured. Stock isolinux.cfg says
# `timeout 0` (wait for a key) and stock grub sets no timeout (wait too): both get 1 s, as
# NeuralDrive's grub menu has. Anything else than the stock files fails the build.
MENU_TIMEOUT_HOOK = """#!/bin/sh
set -e
grep -qx 'timeout 0' isolinux/isolinux.cfg
sed -i 's/^timeout 0$/timeout 10/' isolinux/isolinux.cfg
grep -q 'source /boot/grub/config.cfg' boot/grub/grub.cfg
echo 'set timeout=1' >> boot/grub/config.cfg
"""
HOOK_PATH = "config/hooks/normal/9000-reference-menu-timeout.hook.binary"


def reference_options(profile: Profile) -> list[LbOption]:
    """What the reference sets; everything else is `lb config`'s default (no areas, packages, boot
    loaders or firmware choices of NeuralDrive's)."""
    m = profile.debian.mirrors
    return [
        LbOption("--distribution", profile.debian.suite),  # the default is testing
        LbOption("--architecture", "amd64"),  # the default is the host's
        LbOption("--mirror-bootstrap", m.bootstrap),
        LbOption("--mirror-chroot", m.chroot),
        LbOption("--mirror-binary", m.binary),
        LbOption("--mirror-chroot-security", m.security),
        LbOption("--mirror-binary-security", m.security),
        LbOption("--bootappend-live", f"{STOCK_APPEND} {SERIAL_CONSOLES}", BINARY),
    ]


def reference_args(profile: Profile) -> list[str]:
    return [arg for option in reference_options(profile) for arg in (option.option, option.value)]


def reference_key(profile: Profile, lb_version: str) -> str:
    return cache.config_key(f"reference format {REFERENCE_FORMAT}", reference_options(profile), lb_version,
                            binary_too=True, inputs=[MENU_TIMEOUT_HOOK.encode()])


@dataclass(frozen=True)
class Reference:
    iso: Path
    key: str
    built_at: float  # the ISO's mtime: when it was built (and its packages fetched)
    from_cache: bool


def reference_iso(profile: Profile, cache_dir: Path) -> Reference:
    """The cached reference for the profile's suite and mirrors, built first if there is none."""
    key = reference_key(profile, live_build_version())
    iso = cache_dir / "reference" / f"{key}.iso"
    from_cache = iso.is_file()
    if not from_cache:
        check_host(require_root=True)
        with exclusive_lock(cache_dir / "build.lock", f"waiting for another build using the cache {cache_dir}"):
            if not iso.is_file():  # another bench may have built it meanwhile
                _build(profile, cache_dir / "work" / "reference", iso)
    return Reference(iso=iso, key=key, built_at=iso.stat().st_mtime, from_cache=from_cache)


def _write_hook(build_dir: Path) -> None:
    hook = build_dir / HOOK_PATH
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(MENU_TIMEOUT_HOOK, encoding="utf-8")
    hook.chmod(0o755)


def _build(profile: Profile, build_dir: Path, iso: Path) -> None:
    if build_dir.exists():
        remove_build_dir(build_dir)
    build_dir.mkdir(parents=True)
    with complete_step(f"Building the reference ISO with stock lb build (log: {build_dir / 'build.log'})"):
        runner = LiveBuildRunner(build_dir, {})
        try:
            runner.phase(Phase("config", (("lb", "config", *reference_args(profile)),
                                          PyStep("menu timeout hook", _write_hook))))
            runner.phase(Phase("build", (("lb", "build"),)))
        except BaseException:
            release_mounts(build_dir)  # the build dir stays for its log; nothing stays mounted
            raise
        finally:
            runner.close()
    cache.keep_file(find_iso(build_dir), iso, KEEP_REFERENCES)
    cache.keep_file(build_dir / "build.log", iso.with_suffix(".log"), KEEP_REFERENCES)
    remove_build_dir(build_dir)
