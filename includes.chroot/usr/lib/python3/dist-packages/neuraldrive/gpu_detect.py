"""gpu-detect: find the GPUs, load the kernel driver of those this image supports, write gpu.env.

Runs once at boot before the engine. A GPU without a working driver is recorded, not fatal:
the engine then runs on the CPU, and gpu.env says why.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import Runner, Settings, atomic_write, fail, log, run_command
from .gpu import BACKENDS, VENDORS, Detection, GpuState, PciDevice, Vendor, detect, parse_lspci, scan_sysfs
from .paths import GPU_ENV

PROG = "gpu-detect"
SYSFS_PCI = "/sys/bus/pci/devices"
# Device nodes (/dev/dri/renderD*, /dev/kfd) appear when udev has handled the new driver;
# the engine must not start before that, but a stuck udev must not hold up the boot.
SETTLE_TIMEOUT_S = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Detect display/3D PCI devices (NVIDIA, AMD, Intel), load the kernel driver "
                    "for vendors listed in NEURALDRIVE_GPU_VENDORS, and write "
                    f"{GPU_ENV} for the engine. No GPU means CPU mode (exit 0).")
    parser.add_argument("--root", default="/", metavar="PREFIX",
                        help="read sysfs and write gpu.env under PREFIX (tests)")
    parser.add_argument("--sysfs", metavar="DIR",
                        help=f"PCI devices directory to scan (default PREFIX{SYSFS_PCI})")
    parser.add_argument("--lspci-file", metavar="FILE", type=Path,
                        help="read devices from saved `lspci -nn` output instead of sysfs")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be loaded and written; change nothing")
    return parser


def find_devices(args: argparse.Namespace, run: Runner) -> list[PciDevice]:
    if args.lspci_file is not None:
        return parse_lspci(args.lspci_file.read_text(encoding="utf-8"))
    sysfs = Path(args.sysfs) if args.sysfs else Path(args.root) / SYSFS_PCI.lstrip("/")
    if sysfs.is_dir():
        return scan_sysfs(sysfs)
    result = run(["lspci", "-nn"])  # no sysfs (unusual): ask pciutils
    if not result.ok:
        raise OSError(f"cannot list PCI devices: no {sysfs} and lspci failed: {result.reason()}")
    return parse_lspci(result.stdout)


def load_drivers(vendors: Sequence[Vendor], run: Runner, dry_run: bool) -> dict[str, bool]:
    """modprobe each vendor's modules; returns vendor name -> driver loaded."""
    loaded: dict[str, bool] = {}
    for vendor in vendors:
        commands = [["modprobe", "-a", *vendor.modules]]
        commands += [["modprobe", "-a", m] for m in vendor.optional_modules]
        if dry_run:
            for argv in commands:
                print(f"would run: {' '.join(argv)}")
            loaded[vendor.name] = True
            continue
        result = run(commands[0])
        loaded[vendor.name] = result.ok
        if result.ok:
            log(f"{vendor.name}: loaded {' '.join(vendor.modules)}")
        else:
            log(f"{vendor.name}: driver missing, modprobe failed: {result.reason()}", "warning")
        for argv in commands[1:]:
            extra = run(argv)
            if extra.ok:
                log(f"{vendor.name}: loaded {argv[-1]} (optional)")
            else:
                log(f"{vendor.name}: optional module {argv[-1]} not loaded: {extra.reason()}")
    if loaded and not dry_run and any(loaded.values()):
        settle = run(["udevadm", "settle", f"--timeout={SETTLE_TIMEOUT_S}"])
        if not settle.ok:
            log(f"udev did not settle ({settle.reason()}); device nodes may appear late", "warning")
    return loaded


def chosen_backends(settings: Settings) -> dict[str, str]:
    """NEURALDRIVE_GPU_BACKENDS="amd=rocm ..." (the image's choice) over each vendor's default."""
    backends = {v.name: v.backend for v in VENDORS}
    for word in settings.words("NEURALDRIVE_GPU_BACKENDS"):
        vendor, _, backend = word.partition("=")
        if vendor not in backends or backend not in BACKENDS:
            log(f"NEURALDRIVE_GPU_BACKENDS: ignoring {word!r} (vendor=backend, backend one of "
                f"{' '.join(BACKENDS)})", "warning")
            continue
        backends[vendor] = backend
    return backends


def gpu_state(found: Detection, loaded: dict[str, bool], backends: dict[str, str]) -> GpuState:
    if found.chosen is None:
        return GpuState(present=found.present)
    ok = loaded.get(found.chosen.name, False)
    return GpuState(
        present=found.present,
        vendor=found.chosen.name,
        count=len(found.devices),
        devices=tuple(d.label() for d in found.devices),
        driver="loaded" if ok else "missing",
        backend=backends[found.chosen.name] if ok else "cpu",
    )


def main(argv: Sequence[str] | None = None, run: Runner = run_command) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(os.environ)
    image_vendors = settings.words("NEURALDRIVE_GPU_VENDORS")
    try:
        devices = find_devices(args, run)
    except (OSError, UnicodeDecodeError) as exc:
        if args.lspci_file is not None:
            return fail(PROG, f"cannot read {args.lspci_file}: {exc}")
        # The engine requires this unit: better a CPU-only engine than none at all.
        log(f"{exc}; continuing without a GPU", "warning")
        devices = []
    found = detect(devices, image_vendors)
    unsupported = [v for v in found.present if v not in {s.name for s in found.supported}]
    if unsupported:
        log(f"found {' '.join(unsupported)} GPU(s) but this image has no driver for them "
            f"(NEURALDRIVE_GPU_VENDORS={' '.join(image_vendors) or '(none)'})", "warning")
    loaded = load_drivers(found.supported, run, args.dry_run)
    state = gpu_state(found, loaded, chosen_backends(settings))
    target = Path(args.root) / GPU_ENV.lstrip("/")
    if args.dry_run:
        print(f"would write {target}:")
        print(state.render(), end="")
        return 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, state.render(), mode=0o644)
    except OSError as exc:
        return fail(PROG, f"cannot write {target}: {exc.strerror or exc}")
    log(f"GPU: {state.summary()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
