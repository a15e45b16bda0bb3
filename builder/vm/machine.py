"""Boot a built ISO in QEMU: BIOS or UEFI, as CD or virtio disk, with SSH and gateway forwards.

KVM is used only when it demonstrably runs a guest (on these build hosts /dev/kvm exists but
fails in the kernel decompressor); otherwise TCG with QEMU's default CPU model, which is faster
under TCG than `-cpu max`. Which QEMU runs (the host's or trixie's) is qemu.py's choice. Host
forwards are bound to 127.0.0.1 only. QEMU is always killed by its own PID, on success, failure
or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder import facts
from builder.console import debug
from builder.errors import VMError
from builder.vm.media import extract_from_iso, iso_kernel_path
from builder.vm.qemu import OVMF_DIR, select_qemu
from builder.vm.screen import type_keys

OVMF_CODE = "OVMF_CODE_4M.fd"
OVMF_VARS = "OVMF_VARS_4M.fd"
FIRMWARES = ("bios", "uefi")
MEDIA = ("cd", "disk")
GUEST_SSH = 22
GUEST_ENGINE = facts.OLLAMA_PORT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BootSpec:
    iso: Path
    firmware: str = "bios"
    media: str = "cd"
    memory_mib: int = 3072
    cpus: int = 2
    persistence_disk: Path | None = None
    gateway_guest_port: int = 8443
    accel: str = "auto"  # auto | kvm | tcg
    # A written stick image: boot it as the disk itself (raw, writable), so what the guest
    # persists is still there on the next boot.
    writable_disk: bool = False
    # Boot the ISO's kernel and initrd directly with this command line (skips the boot menu,
    # e.g. to pick the encrypted-persistence options).
    kernel_append: str | None = None


@dataclass
class Forwards:
    ssh: int = field(default_factory=free_port)
    gateway: int = field(default_factory=free_port)
    engine: int = field(default_factory=free_port)


_KVM_VERDICT: dict[str, bool] = {}


def kvm_works(kernel: Path) -> bool:
    """Boot `kernel` under KVM without a root fs: a kernel panic means the CPU ran it fine."""
    if "verdict" in _KVM_VERDICT:
        return _KVM_VERDICT["verdict"]
    verdict = False
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        cmd = select_qemu().command(["-accel", "kvm", "-m", "256", "-nographic", "-no-reboot", "-kernel",
                                     str(kernel.resolve()), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"],
                                    [kernel])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False,
                                 stdin=subprocess.DEVNULL)
            verdict = "Kernel panic" in out.stdout or "VFS: Unable to mount root" in out.stdout
        except subprocess.TimeoutExpired:
            verdict = False
    _KVM_VERDICT["verdict"] = verdict
    debug(f"KVM {'works' if verdict else 'does not run guests here: using TCG'}")
    return verdict


class VM:
    """One QEMU guest. Use as a context manager so it is always killed."""

    def __init__(self, spec: BootSpec, workdir: Path, name: str | None = None) -> None:
        if spec.firmware not in FIRMWARES or spec.media not in MEDIA:
            raise VMError(f"boot mode {spec.firmware}-{spec.media}: use bios|uefi and cd|disk")
        if not spec.iso.is_file():
            raise VMError(f"{spec.iso}: no such ISO")
        if shutil.which("qemu-img") is None:
            raise VMError("qemu-img not found: run `sudo scripts/setup-host`")
        self.qemu = select_qemu()
        if spec.firmware == "uefi" and not self.qemu.ovmf(OVMF_CODE).is_file():
            raise VMError(f"{self.qemu.ovmf(OVMF_CODE)} not found: install ovmf (scripts/setup-host)")
        # Absolute paths: a QEMU chrooted in the tools root starts in its / (see qemu.py).
        disk = spec.persistence_disk.resolve() if spec.persistence_disk is not None else None
        self.spec = replace(spec, iso=spec.iso.resolve(), persistence_disk=disk)
        self.workdir = workdir.resolve()
        self.forwards = Forwards()
        name = name or f"{spec.firmware}-{spec.media}"
        self.serial_log = self.workdir / f"serial-{name}.log"
        self.serial_socket = self.workdir / f"serial-{name}.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.accel = "tcg"

    def command(self) -> list[str]:
        s, f = self.spec, self.forwards
        netdev = (
            f"user,id=n0,hostfwd=tcp:127.0.0.1:{f.ssh}-:{GUEST_SSH},"
            f"hostfwd=tcp:127.0.0.1:{f.gateway}-:{s.gateway_guest_port},"
            f"hostfwd=tcp:127.0.0.1:{f.engine}-:{GUEST_ENGINE}"
        )
        cmd = [
            "-accel", self.accel, "-machine", "q35", "-smp", str(s.cpus),
            "-m", str(s.memory_mib), "-display", "none", "-monitor", "none", "-no-reboot",
            # A socket, so the harness can type (a LUKS passphrase); everything is logged to the file.
            "-chardev", f"socket,id=ser0,path={self.serial_socket},server=on,wait=off,logfile={self.serial_log}",
            "-serial", "chardev:ser0",
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
        ]
        if s.firmware == "uefi":
            vars_copy = self.workdir / "OVMF_VARS.fd"
            shutil.copyfile(self.qemu.ovmf(OVMF_VARS), vars_copy)
            cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_DIR / OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        if s.kernel_append is not None:
            kernel = extract_from_iso(s.iso, iso_kernel_path(s.iso), self.workdir / "vmlinuz")
            initrd = extract_from_iso(s.iso, iso_kernel_path(s.iso).replace("vmlinuz", "initrd.img"),
                                      self.workdir / "initrd.img")
            cmd += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", s.kernel_append]
        boot_index = "" if s.kernel_append is not None else ",bootindex=0"
        if s.media == "disk" and s.writable_disk:
            cmd += ["-drive", f"file={s.iso},format=raw,if=none,id=disk0",
                    "-device", f"virtio-blk-pci,drive=disk0{boot_index}"]
        elif s.media == "cd":
            cmd += ["-drive", f"file={s.iso},media=cdrom,readonly=on,if=none,id=cd0",
                    "-device", "ide-cd,drive=cd0,bootindex=0"]
        else:
            # A qcow2 overlay: the guest may write to "its USB stick" without touching the ISO.
            overlay = self.workdir / "boot-disk.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(s.iso.resolve()),
                            str(overlay)], check=True)
            cmd += ["-drive", f"file={overlay},format=qcow2,if=none,id=disk0",
                    "-device", f"virtio-blk-pci,drive=disk0{boot_index}"]
        if s.persistence_disk is not None:
            cmd += ["-drive", f"file={s.persistence_disk},format=qcow2,if=virtio"]
        paths = [self.workdir, s.iso] + ([s.persistence_disk] if s.persistence_disk else [])
        return self.qemu.command(cmd, paths)

    def start(self) -> None:
        if self.spec.accel == "kvm" or (self.spec.accel == "auto" and self._kvm_probe()):
            self.accel = "kvm"
        self.serial_log.write_bytes(b"")
        self.serial_socket.unlink(missing_ok=True)
        cmd = self.command()
        debug(" ".join(cmd))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.workdir / "qemu.stderr").open("wb"), start_new_session=True)

    def _kvm_probe(self) -> bool:
        if "verdict" in _KVM_VERDICT:
            return _KVM_VERDICT["verdict"]
        if not os.path.exists("/dev/kvm"):
            return False
        kernel = extract_from_iso(self.spec.iso, iso_kernel_path(self.spec.iso), self.workdir / "vmlinuz")
        return kvm_works(kernel)

    def type_on_serial(self, text: str) -> None:
        type_keys(self.serial_socket, text)

    def answer_prompts(self, prompt: str, answer: str) -> threading.Event:
        """Type `answer` each time a new `prompt` shows on the serial console (live-boot asks for a
        LUKS passphrase once per probe) until the returned event is set."""
        done = threading.Event()

        def watch() -> None:
            answered = 0
            while not done.is_set() and self.alive():
                seen = self.serial_log.read_text(errors="replace").count(prompt)
                if seen > answered:
                    self.type_on_serial(answer)
                    answered = seen
                done.wait(0.5)

        threading.Thread(target=watch, daemon=True).start()
        return done

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def serial_tail(self, lines: int = 40) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_serial(self, marker: str, timeout: float) -> float:
        """Seconds from QEMU start until `marker` appears on the serial console."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise VMError(f"QEMU exited early ({self._stderr()}); serial tail:\n{self.serial_tail()}")
            if marker in self.serial_log.read_text(errors="replace"):
                return self.elapsed()
            time.sleep(1)
        raise VMError(f"no {marker!r} on the serial console within {timeout:.0f}s; tail:\n{self.serial_tail()}")

    def wait_until(self, probe_name: str, probe: Callable[[], bool], timeout: float, interval: float = 2.0) -> float:
        """Poll `probe` until true; seconds since QEMU start. Fails loudly with the serial tail."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise VMError(f"QEMU exited early ({self._stderr()}); serial tail:\n{self.serial_tail()}")
            if probe():
                return self.elapsed()
            time.sleep(interval)
        raise VMError(f"{probe_name} not ready within {timeout:.0f}s of boot; serial tail:\n{self.serial_tail()}")

    def _stderr(self) -> str:
        try:
            return (self.workdir / "qemu.stderr").read_text(errors="replace").strip()[-300:] or "no stderr"
        except OSError:
            return "no stderr"

    def stop(self, graceful_timeout: float = 0.0) -> None:
        """Kill QEMU by its own PID (and its process group); wait for a clean exit first if asked."""
        if self.proc is None:
            return
        if graceful_timeout and self.alive():
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(graceful_timeout)
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None



@contextmanager
def running(spec: BootSpec, workdir: Path) -> Iterator[VM]:
    vm = VM(spec, workdir)
    try:
        vm.start()
        yield vm
    finally:
        vm.stop()
