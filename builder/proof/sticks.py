"""Stick tests: `build.py usb --image` output booted as a disk. A plain stick keeps its persistence
across a BIOS → UEFI reboot; a LUKS stick is unlocked on the serial console."""

from __future__ import annotations

import time
from pathlib import Path

from builder import facts
from builder.console import complete_step
from builder.profile import Profile
from builder.proof.boots import BOOT_TIMEOUT, BootFigures, boot_and_wait, poweroff
from builder.proof.summary import Summary
from builder.usb.layout import parse_size
from builder.usb.write import write_image
from builder.vm.guest import SshAccess, close_master, ssh, write_ssh_config
from builder.vm.machine import VM, BootSpec
from builder.vm.media import grub_entry_append

STICK_PASSPHRASE = "neuraldrive image test"
MARKER = f"{facts.OVERRIDE_DIR}/stick-marker"


def write_test_stick(iso: Path, image: Path, encrypt: bool) -> None:

    # Test sticks only: a cheap KDF, since the guest unlocks under TCG emulation where argon2id's
    # host-benchmarked cost (1 GiB, ~2 s natively) takes minutes. Real sticks keep the default.
    kdf = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000") if encrypt else ()
    write_image(iso, image, parse_size("3G"), "100%", STICK_PASSPHRASE.encode() if encrypt else None, None, kdf)


def _persistence_source(access: SshAccess) -> str:
    """The block device under /var/lib/neuraldrive and its label (or LUKS mapping)."""
    result = ssh(access, f"findmnt -n -o SOURCE -T {facts.STATE_DIR} | sed 's/\\[.*//' | "
                         "xargs -r lsblk -n -o NAME,LABEL,TYPE")
    return result.stdout.strip()


def _no_failed_units(summary: Summary, label: str, figures: BootFigures) -> None:
    if figures.failed_units:
        summary.errors.append(f"{label}: failed units {figures.failed_units}")


def run_stick_tests(profile: Profile, iso: Path, key: Path, workdir: Path, summary: Summary) -> None:
    """`build.py usb --image` output booted as a disk: persistence survives a BIOS → UEFI reboot; an
    encrypted stick boots with the kernel line of the ISO's own "encrypted persistence" menu entry
    and its passphrase typed on the serial console."""
    plain = workdir / "stick.img"
    with complete_step("Writing a test stick image (build.py usb --image)"):
        write_test_stick(iso, plain, encrypt=False)
    marker = ""
    for firmware in ("bios", "uefi"):
        figures = BootFigures(mode=f"{firmware}-stick")
        summary.boots.append(figures)
        vm = VM(BootSpec(iso=plain, firmware=firmware, media="disk", writable_disk=True,
                         gateway_guest_port=profile.gateway.port), workdir, name=f"{firmware}-stick")
        access = write_ssh_config(workdir, key, vm.forwards.ssh)
        try:
            with complete_step(f"Booting the stick image ({firmware})"):
                vm.start()
                boot_and_wait(vm, access, figures, want_gateway=True)
            source = _persistence_source(access)
            if "persistence" not in source:
                summary.errors.append(f"{firmware}-stick: {facts.STATE_DIR} is not on the persistence "
                                      f"partition ({source or 'unknown'})")
            if not marker:
                marker = f"written on the {firmware} boot at {time.time():.0f}"
                wrote = ssh(access, f"echo '{marker}' | sudo tee {MARKER} >/dev/null && sync && sudo cat {MARKER}")
                if wrote.stdout.strip() != marker:
                    summary.errors.append(f"{firmware}-stick: could not write {MARKER}: {wrote.stderr.strip()}")
            else:
                found = ssh(access, f"sudo cat {MARKER}").stdout.strip()
                if found != marker:
                    mounts = ssh(access, f"findmnt -n -T {facts.STATE_DIR}; ls -la {facts.OVERRIDE_DIR}")
                    summary.errors.append(f"{firmware}-stick: marker from the previous boot is {found!r}, "
                                          f"expected {marker!r} ({mounts.stdout.strip()})")
                else:
                    summary.passed += 1
            _no_failed_units(summary, f"{firmware}-stick", figures)
            poweroff(vm, access)
        finally:
            close_master(access)
            vm.stop()
    encrypted = workdir / "stick-luks.img"
    with complete_step("Writing an encrypted test stick image (build.py usb --image --encrypt)"):
        write_test_stick(iso, encrypted, encrypt=True)
    figures = BootFigures(mode="bios-stick-luks")
    summary.boots.append(figures)
    # The default entry: an encrypted stick must not need a menu choice to keep its persistence.
    append = grub_entry_append(iso, "neuraldrive")
    vm = VM(BootSpec(iso=encrypted, media="disk", writable_disk=True, kernel_append=append,
                     gateway_guest_port=profile.gateway.port), workdir, name="luks-stick")
    access = write_ssh_config(workdir, key, vm.forwards.ssh)
    try:
        with complete_step("Booting the encrypted stick, typing the passphrase on the serial console"):
            vm.start()
            typing = vm.answer_prompts("Please unlock disk", STICK_PASSPHRASE + "\r")
            try:
                vm.wait_for_serial("Please unlock disk", BOOT_TIMEOUT)
                boot_and_wait(vm, access, figures, want_gateway=True)
            finally:
                typing.set()
        source = _persistence_source(access)
        if "crypt" not in source:
            summary.errors.append(f"encrypted stick: {facts.STATE_DIR} is not on the unlocked LUKS volume "
                                  f"({source or 'unknown'})")
        else:
            summary.passed += 1
        _no_failed_units(summary, "encrypted stick", figures)
    finally:
        close_master(access)
        vm.stop()
