"""`build.py boot`: one guest by hand, with SSH and the gateway forwarded to 127.0.0.1."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from builder import facts
from builder.console import info
from builder.vm.machine import VM, BootSpec
from builder.vm.media import make_persistence_disk
from builder.vm.screen import wait_for_console


def boot_iso(spec: BootSpec, check: bool, timeout: int) -> None:
    """Boot until the console (the menu, or the login prompt); then exit (`check`) or keep the guest
    running until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="neuraldrive-boot-") as tmp:
        if spec.persistence_disk is not None and not spec.persistence_disk.exists():
            make_persistence_disk(spec.persistence_disk)
        vm = VM(spec, Path(tmp))
        try:
            vm.start()
            info(f"{vm.qemu.description}, {vm.accel}, pid {vm.proc.pid if vm.proc else '?'}; "
                 f"serial log {vm.serial_log}; "
                 f"ssh -p {vm.forwards.ssh} {facts.ADMIN_USER}@127.0.0.1; gateway https://127.0.0.1:"
                 f"{vm.forwards.gateway}/")
            seconds = wait_for_console(vm, timeout)
            print(f"console after {seconds:.0f}s ({spec.firmware}, {spec.media}, {vm.accel})", flush=True)
            if not check:
                info("running; Ctrl-C stops the VM")
                while vm.alive():
                    time.sleep(1)
        finally:
            vm.stop()
