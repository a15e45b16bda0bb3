"""`build.py bench`'s boots: in each mode, `runs` times, NeuralDrive to an authenticated /api/version
through its gateway and then the reference (a stock Debian live ISO, image/reference.py) to its login
prompt, alternately, so a change in the machine's load hits both alike. Both guests get the same QEMU
machine with a fresh persistence disk (the one `build.py boot --persistence` makes).

So every NeuralDrive boot is a first boot: neuraldrive-firstboot makes the device's secrets (API and
admin keys, ed25519 and ECDSA host keys, a P-256 TLS key: no RSA), which is what the owner of a new
stick waits for; later boots skip that step and are not timed here. The reference leaves its disk
alone (its command line has no `persistence`): the disk is there so both have the same hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from builder.console import info
from builder.errors import VMError
from builder.proof.boots import BootFigures, measure_boot, measure_console
from builder.proof.figures import Figure
from builder.vm.machine import BootSpec
from builder.vm.media import make_persistence_disk


@dataclass
class BenchBoots:
    figures: dict[str, Figure] = field(default_factory=dict)
    boots: list[dict[str, Any]] = field(default_factory=list)  # one entry per boot, in the order run
    analysis: dict[str, str] = field(default_factory=dict)  # per mode, its last NeuralDrive boot's
    accel: str = ""
    qemu: str = ""

    def add(self, key: str, name: str, value: float | None) -> None:
        if value is not None:
            self.figures.setdefault(key, Figure(name, "s")).values.append(value)


def with_fresh_disk(spec: BootSpec, workdir: Path) -> BootSpec:
    workdir.mkdir(parents=True)
    return replace(spec, persistence_disk=make_persistence_disk(workdir / "persistence.qcow2"))


def reference_boot(iso: Path, mode: str, workdir: Path) -> BootFigures:
    """The reference to its login prompt; an error that says so when it does not get there."""
    firmware, media = mode.split("-")
    spec = with_fresh_disk(BootSpec(iso=iso, firmware=firmware, media=media), workdir)
    try:
        return measure_console(spec, workdir)
    except VMError as error:
        raise VMError(f"the reference ISO {iso} did not boot to a login prompt on ttyS0 in the QEMU harness "
                      f"({mode}), so it gives no figure to compare with; --no-reference skips it\n{error}") from None


def run_boots(iso: Path, reference: Path | None, gateway_port: int, key: Path | None, modes: list[str], runs: int,
              tmp: Path) -> BenchBoots:
    result = BenchBoots()
    for mode in modes:
        firmware, media = mode.split("-")
        for run in range(runs):
            info(f"== boot {mode} ({run + 1}/{runs}), first boot on a fresh persistence disk")
            spec = with_fresh_disk(BootSpec(iso=iso, firmware=firmware, media=media, gateway_guest_port=gateway_port),
                                   tmp / f"boot-{mode}-{run}")
            boot = measure_boot(spec, key, tmp / f"boot-{mode}-{run}")
            result.add(f"boot_console_{mode}", f"boot to console, {mode}", boot.console_s)
            result.add(f"boot_ssh_{mode}", f"boot to ssh, {mode}", boot.ssh_s)
            result.add(f"boot_gateway_{mode}", f"boot to gateway, {mode}", boot.gateway_ready_s)
            result.add(f"initramfs_{mode}", f"time in the initramfs, {mode}", boot.initramfs_s)
            if boot.initramfs_s is None:
                info("  no initramfs time: the kernel log lacks 'Run /init' or the real init's start")
            result.accel, result.qemu = boot.accel, boot.qemu
            if boot.analysis:
                result.analysis[mode] = boot.analysis
            result.boots.append({"image": "neuraldrive", "mode": mode, "run": run + 1, "console_s": boot.console_s,
                                 "ssh_s": boot.ssh_s, "gateway_s": boot.gateway_ready_s,
                                 "initramfs_s": boot.initramfs_s, "critical_chain": boot.critical_chain})
            if reference is not None:
                info(f"== reference boot {mode} ({run + 1}/{runs}) to its login prompt")
                ref = reference_boot(reference, mode, tmp / f"reference-{mode}-{run}")
                result.add(f"reference_console_{mode}", f"reference to login, {mode}", ref.console_s)
                result.boots.append({"image": "reference", "mode": mode, "run": run + 1, "console_s": ref.console_s})
    return result
