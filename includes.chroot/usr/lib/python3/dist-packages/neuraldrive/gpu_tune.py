"""gpu-tune: set up an NVIDIA GPU for the engine once its driver is loaded.

Creates the device nodes CUDA needs, turns on persistence mode, and applies the optional
power limit and locked clocks from NEURALDRIVE_GPU_*. Does nothing, successfully, when
gpu.env reports no NVIDIA GPU with a loaded driver.

This is separate from gpu-detect so that only this step holds CAP_SYS_ADMIN and device
access, and gpu-detect can run with PrivateDevices=yes.

The nodes are made here with mknod, as NVIDIA's installation guide describes, rather than
with nvidia-modprobe: that tool runs modprobe unless /proc/modules lists a module named
exactly "nvidia-uvm" (Debian renames it nvidia-current-uvm), and this sandbox cannot load
modules; gpu-detect has already loaded them.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import ConfigError, Runner, Settings, fail, log, run_command
from .gpu import read_gpu_state
from .paths import GPU_ENV

PROG = "gpu-tune"
MISSING = 127  # run_command's code for "no such program"
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")
_CLOCKS = re.compile(r"^(\d+)(?:,(\d+))?$")


@dataclass(frozen=True)
class Tuning:
    persistence: bool
    power_limit: int | None  # watts
    locked_clocks: str | None  # "MIN,MAX" MHz, as nvidia-smi -lgc takes it

    @classmethod
    def from_settings(cls, settings: Settings) -> Tuning:
        raw = settings.text("NEURALDRIVE_GPU_PERSISTENCE", "1").lower()
        if raw not in _TRUE + _FALSE:
            raise ConfigError(f"NEURALDRIVE_GPU_PERSISTENCE={raw!r} is not 1 or 0")
        power = settings.integer("NEURALDRIVE_GPU_POWER_LIMIT", 0, minimum=1) or None
        clocks = settings.text("NEURALDRIVE_GPU_LOCKED_CLOCKS") or None
        if clocks is not None:
            m = _CLOCKS.match(clocks.replace(" ", ""))
            if not m:
                raise ConfigError(f"NEURALDRIVE_GPU_LOCKED_CLOCKS={clocks!r} is not MHz or MIN,MAX")
            # A single value locks min and max to it: steady clocks, steady token rate.
            clocks = f"{m[1]},{m[2] or m[1]}"
        return cls(raw in _TRUE, power, clocks)

    def smi_commands(self) -> list[list[str]]:
        commands = []
        if self.persistence:
            commands.append(["nvidia-smi", "-pm", "1"])
        if self.power_limit is not None:
            commands.append(["nvidia-smi", "-pl", str(self.power_limit)])
        if self.locked_clocks is not None:
            commands.append(["nvidia-smi", "-lgc", self.locked_clocks])
        return commands


# The NVIDIA driver's fixed character major (/dev/nvidiaN, /dev/nvidiactl); UVM's is dynamic.
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255
NODE_MODE = 0o666  # the driver's default (NVreg_DeviceFileMode); the engine runs unprivileged


def char_major(proc_devices: str, name: str) -> int | None:
    """The major number /proc/devices lists for character device `name`."""
    in_char = False
    for line in proc_devices.splitlines():
        if line.strip().endswith(":"):
            in_char = line.strip() == "Character devices:"
            continue
        fields = line.split()
        if in_char and len(fields) == 2 and fields[1] == name and fields[0].isdigit():
            return int(fields[0])
    return None


def wanted_nodes(gpu_count: int, proc_devices: str) -> list[tuple[str, int, int]]:
    """(name under /dev, major, minor) of every node CUDA opens."""
    nodes = [(f"nvidia{i}", NVIDIA_MAJOR, i) for i in range(gpu_count)]
    nodes.append(("nvidiactl", NVIDIA_MAJOR, NVIDIACTL_MINOR))
    uvm = char_major(proc_devices, "nvidia-uvm")
    if uvm is not None:
        nodes += [("nvidia-uvm", uvm, 0), ("nvidia-uvm-tools", uvm, 1)]
    return nodes


Mknod = Callable[[str, int, int], None]


def make_node(path: str, mode: int, device: int) -> None:
    os.mknod(path, mode, device)
    os.chmod(path, stat.S_IMODE(mode))  # mknod applies the umask


def ensure_nodes(dev: Path, nodes: list[tuple[str, int, int]],
                 mknod: Mknod = make_node) -> list[str]:
    """Create the missing nodes; returns what it created. Existing ones are left alone."""
    created = []
    for name, major, minor in nodes:
        path = dev / name
        if path.exists():
            continue
        mknod(str(path), stat.S_IFCHR | NODE_MODE, os.makedev(major, minor))
        created.append(name)
    return created


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prepare a detected NVIDIA GPU: device nodes (/dev/nvidia*), persistence "
                    "mode, power limit and locked clocks from NEURALDRIVE_GPU_PERSISTENCE, "
                    "NEURALDRIVE_GPU_POWER_LIMIT (W) and NEURALDRIVE_GPU_LOCKED_CLOCKS (MHz). "
                    f"Exits 0 without doing anything unless {GPU_ENV} reports NVIDIA.")
    parser.add_argument("--root", default="/", metavar="PREFIX",
                        help="find gpu.env, /proc/devices and /dev under PREFIX (tests)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    return parser


def main(argv: Sequence[str] | None = None, run: Runner = run_command,
         mknod: Mknod = make_node) -> int:
    args = build_parser().parse_args(argv)
    try:
        tuning = Tuning.from_settings(Settings(os.environ))
    except ConfigError as exc:
        return fail(PROG, str(exc), 2)
    env_path = Path(args.root) / GPU_ENV.lstrip("/")
    state = read_gpu_state(env_path)
    if state is None:
        log(f"no {env_path} (gpu-detect has not run); nothing to do")
        return 0
    if not state.nvidia_ready:
        log(f"no NVIDIA GPU with a loaded driver (GPU: {state.summary()}); nothing to do")
        return 0
    root = Path(args.root)
    try:
        proc_devices = (root / "proc/devices").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        proc_devices = ""
    nodes = wanted_nodes(max(state.count, 1), proc_devices)
    if not any(name == "nvidia-uvm" for name, _, _ in nodes):
        log("nvidia-uvm is not loaded (no entry in /proc/devices): CUDA will not work", "warning")
    smi = tuning.smi_commands()
    if args.dry_run:
        for name, major, minor in nodes:
            print(f"would create if missing: /dev/{name} (char {major}:{minor})")
        for argv_ in smi:
            print(f"would run: {' '.join(argv_)}")
        return 0

    failed = False
    try:
        created = ensure_nodes(root / "dev", nodes, mknod)
    except OSError as exc:
        log(f"cannot create NVIDIA device nodes: {exc}", "error")
        failed = True
    else:
        if created:
            log(f"created /dev/{' /dev/'.join(created)}")
    for argv_ in smi:
        result = run(argv_)
        if result.returncode == MISSING:
            # Persistence mode alone is a nicety; a requested limit that cannot be set is not.
            explicit = tuning.power_limit is not None or tuning.locked_clocks is not None
            log("nvidia-smi is not installed; cannot apply GPU settings",
                "error" if explicit else "warning")
            return 1 if explicit or failed else 0
        if result.ok:
            log(f"applied: {' '.join(argv_)}")
        else:
            log(f"{' '.join(argv_)} failed: {result.reason()}", "error")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
