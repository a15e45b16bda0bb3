"""Boot measurement: one boot timed from QEMU start to the console (the menu; the login prompt with
console.menu: false), SSH, a settled system and a ready gateway, with the guest's own account of
where the time went (systemd-analyze, the kernel's timestamps); or, for the bench's reference
image, to its login prompt only."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from builder import facts
from builder.console import info
from builder.errors import VMError
from builder.proof.kernellog import initramfs_seconds
from builder.proof.probe import api_key_from_serial, gateway_ready
from builder.vm.guest import SshAccess, close_master, ssh, ssh_answers, write_ssh_config
from builder.vm.machine import VM, BootSpec
from builder.vm.screen import wait_for_console

BOOT_TIMEOUT = 600.0
API_KEY_COMMAND = f"sudo cat {facts.API_KEY_FILE}"


@dataclass
class BootFigures:
    mode: str
    accel: str = ""
    qemu: str = ""  # which QEMU ran it (version, host's or the tools root's): boot times depend on it
    # Power-on to the console's first screen: the menu, or the login prompt (console.menu: false).
    console_s: float | None = None
    ssh_s: float | None = None
    system_running_s: float | None = None
    gateway_ready_s: float | None = None
    failed_units: list[str] = field(default_factory=list)
    # The guest's own account (systemd-analyze): where the boot went, for the bench to report.
    analysis: str = ""
    # From "Run /init as init process" to the real init, by the kernel's timestamps (kernellog.py).
    initramfs_s: float | None = None
    # `systemd-analyze critical-chain UNIT` for the gateway and the engine.
    critical_chain: dict[str, str] = field(default_factory=dict)


def boot_and_wait(vm: VM, access: SshAccess, figures: BootFigures, want_gateway: bool) -> str:
    """Wait for the console, SSH, a settled system and (optionally) the gateway; returns the API key."""
    figures.accel, figures.qemu = vm.accel, vm.qemu.description
    figures.console_s = round(wait_for_console(vm, BOOT_TIMEOUT), 1)
    figures.ssh_s = round(vm.wait_until("SSH", lambda: ssh_answers(access), BOOT_TIMEOUT), 1)
    state = ssh(access, "systemctl is-system-running --wait", timeout=BOOT_TIMEOUT)
    figures.system_running_s = round(vm.elapsed(), 1)
    failed = ssh(access, "systemctl --failed --no-legend --plain | awk '{print $1}'")
    figures.failed_units = failed.stdout.split()
    if state.stdout.strip() != "running":
        info(f"  system state: {state.stdout.strip()} (failed units: {' '.join(figures.failed_units) or 'none'})")
        for unit in figures.failed_units:
            # What a reader of the CI log needs to see why, without booting the image again.
            journal = ssh(access, f"sudo journalctl -b -u {shlex.quote(unit)} -n 15 --no-pager -o short-monotonic")
            for line in journal.stdout.splitlines():
                info(f"    {line}")
    key = ssh(access, API_KEY_COMMAND).stdout.strip()
    if want_gateway:
        if not key:
            raise VMError("the guest has no API key (neuraldrive-firstboot failed?)")
        figures.gateway_ready_s = round(
            vm.wait_until("gateway", lambda: gateway_ready(vm.forwards.gateway, key), BOOT_TIMEOUT), 1)
    return key


# The kernel's side (the initramfs's end) comes from one full `sudo dmesg`, parsed by kernellog.py.
ANALYZE = "systemd-analyze; systemd-analyze critical-chain --no-pager; systemd-analyze blame --no-pager | head -20"
CHAIN_UNITS = (f"{facts.GATEWAY_USER}.service", f"{facts.OLLAMA_USER}.service")  # the gateway, the engine


def measure_boot(spec: BootSpec, key: Path | None, workdir: Path) -> BootFigures:
    """One boot, timed from QEMU start: console, SSH (if the image has it), gateway ready."""
    figures = BootFigures(mode=f"{spec.firmware}-{spec.media}")
    vm = VM(spec, workdir)
    access = write_ssh_config(workdir, key, vm.forwards.ssh) if key is not None else None
    try:
        vm.start()
        figures.accel, figures.qemu = vm.accel, vm.qemu.description
        figures.console_s = round(wait_for_console(vm, BOOT_TIMEOUT), 1)
        if access is not None:
            figures.ssh_s = round(vm.wait_until("SSH", lambda: ssh_answers(access), BOOT_TIMEOUT), 1)
            api_key = ssh(access, API_KEY_COMMAND).stdout.strip()
        else:
            api_key = api_key_from_serial(vm, BOOT_TIMEOUT)
        figures.gateway_ready_s = round(
            vm.wait_until("gateway", lambda: gateway_ready(vm.forwards.gateway, api_key), BOOT_TIMEOUT, 1.0), 1)
        if access is not None:
            figures.analysis = ssh(access, ANALYZE, timeout=120).stdout
            kernel_log = ssh(access, "sudo dmesg", timeout=120).stdout
            for unit in CHAIN_UNITS:
                chain = ssh(access, f"systemd-analyze critical-chain --no-pager {unit}", timeout=120)
                figures.critical_chain[unit] = (chain.stdout or chain.stderr).strip()
        else:
            kernel_log = vm.serial_log.read_text(errors="replace")
        figures.initramfs_s = initramfs_seconds(kernel_log)
    finally:
        if access is not None:
            close_master(access)
        vm.stop()
    return figures


def measure_console(spec: BootSpec, workdir: Path) -> BootFigures:
    """One boot timed from QEMU start to the console's first screen (a login prompt, for an image
    that is not NeuralDrive), nothing more."""
    figures = BootFigures(mode=f"{spec.firmware}-{spec.media}")
    vm = VM(spec, workdir)
    try:
        vm.start()
        figures.accel, figures.qemu = vm.accel, vm.qemu.description
        figures.console_s = round(wait_for_console(vm, BOOT_TIMEOUT), 1)
    finally:
        vm.stop()
    return figures


def poweroff(vm: VM, access: SshAccess) -> None:
    ssh(access, "sudo systemctl poweroff", timeout=30)
    close_master(access)
    vm.stop(graceful_timeout=120)
