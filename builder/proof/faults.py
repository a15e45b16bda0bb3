"""Power loss during first boot: QEMU killed (no shutdown, the guest's unsynced writes lost) while
neuraldrive-firstboot makes the device's secrets, at several points; the next boot must come up whole,
and secrets already made must survive a later cut."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from builder import facts
from builder.console import complete_step, info
from builder.profile import Profile
from builder.proof.boots import BOOT_TIMEOUT, BootFigures, boot_and_wait, poweroff
from builder.proof.sticks import write_test_stick
from builder.proof.summary import Summary
from builder.vm.guest import SshAccess, close_master, ssh, write_ssh_config
from builder.vm.machine import VM, BootSpec

# systemd's "Starting neuraldrive-firstboot.service" line (with colour codes between the words) is
# the unit's first mention on the console.
FIRSTBOOT_STARTS = "neuraldrive-firstboot"
# Seconds after firstboot starts at which the power goes: before, during and after key generation
# (under TCG the API key takes well under a second, each host key a few seconds).
CUT_POINTS = (1.0, 5.0)
# What must hold after every interrupted first boot: no empty secret, no temp file left over, every
# key whole (ssh-keygen can read it), firstboot and the gateway up.
SECRETS_CHECK = "sudo sh -c " + shlex.quote(
    f"find {facts.SECRETS_DIR} {facts.SSH_HOST_KEY_DIR} -mindepth 1 "
    "\\( -empty -o -name '*.tmp.*' -o -name '.new.*' \\) -print; "
    f"for k in {facts.SSH_HOST_KEY_DIR}/ssh_host_*_key; do ssh-keygen -l -f \"$k\" >/dev/null || echo \"bad $k\"; done")
FINGERPRINTS = "sudo sh -c " + shlex.quote(
    f"sha256sum {facts.API_KEY_FILE} {facts.ADMIN_KEY_FILE} {facts.SSH_HOST_KEY_DIR}/ssh_host_*_key "
    f"{facts.TLS_DIR}/ca.key")


def _cut_power(profile: Profile, image: Path, workdir: Path, after: float, label: str) -> None:
    """Boot `image`, pull the plug `after` seconds into firstboot."""
    vm = VM(BootSpec(iso=image, media="disk", writable_disk=True, gateway_guest_port=profile.gateway.port),
            workdir, name=f"fault-{label}")
    try:
        vm.start()
        vm.wait_for_serial(FIRSTBOOT_STARTS, BOOT_TIMEOUT)
        time.sleep(after)
    finally:
        vm.stop()  # SIGKILL: no shutdown, nothing flushed


def _boot_whole(profile: Profile, image: Path, key: Path, workdir: Path, summary: Summary, label: str) -> str:
    """Boot to a ready gateway; record problems; return the secrets' fingerprints."""
    figures = BootFigures(mode=f"bios-stick-{label}")
    summary.boots.append(figures)
    vm = VM(BootSpec(iso=image, media="disk", writable_disk=True, gateway_guest_port=profile.gateway.port),
            workdir, name=f"fault-{label}")
    access: SshAccess = write_ssh_config(workdir, key, vm.forwards.ssh)
    try:
        vm.start()
        boot_and_wait(vm, access, figures, want_gateway=True)
        problems = ssh(access, SECRETS_CHECK).stdout.strip()
        state = ssh(access, "systemctl is-active neuraldrive-firstboot.service").stdout.strip()
        if problems or state != "active" or figures.failed_units:
            summary.errors.append(f"{label}: after the power cut: firstboot {state}, failed units "
                                  f"{figures.failed_units}, leftovers {problems or 'none'}")
        else:
            summary.passed += 1
        fingerprints = ssh(access, FINGERPRINTS).stdout
        poweroff(vm, access)
        return fingerprints
    finally:
        close_master(access)
        vm.stop()


def run_power_cut_tests(profile: Profile, iso: Path, key: Path, workdir: Path, summary: Summary) -> None:
    image = workdir / "stick-faults.img"
    with complete_step("Writing a stick image for the power-cut tests"):
        write_test_stick(iso, image, encrypt=False)
    for seconds in CUT_POINTS:
        with complete_step(f"Cutting the power {seconds:g} s into the first boot's firstboot"):
            _cut_power(profile, image, workdir, seconds, f"cut-{seconds:g}s")
    with complete_step("Booting after the power cuts"):
        before = _boot_whole(profile, image, key, workdir, summary, "after-cuts")
    with complete_step("Cutting the power during a later boot's firstboot (secrets exist)"):
        _cut_power(profile, image, workdir, CUT_POINTS[-1], "cut-later")
    with complete_step("Booting again: every secret as it was"):
        after = _boot_whole(profile, image, key, workdir, summary, "after-later-cut")
    if before and before == after:
        summary.passed += 1
    else:
        summary.errors.append("power cut after the first boot: the device's secrets changed "
                              f"(before {before.split()!r}, after {after.split()!r})")
    info(f"  power cut at {', '.join(f'{a:g} s' for a in CUT_POINTS)} into the first boot's firstboot, "
         f"then {CUT_POINTS[-1]:g} s into a later one")
