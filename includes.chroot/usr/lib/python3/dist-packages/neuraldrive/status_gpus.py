"""Each GPU the engine was given, with its VRAM used and total where the driver tells it.

The cards come from gpu.env (gpu-detect's PCI scan, NEURALDRIVE_GPU_DEVICES); their VRAM from
the tool or file each driver offers:
  - NVIDIA: `nvidia-smi --query-gpu` (needs /dev/nvidia*, so only a unit with device access gets
    figures; elsewhere the row says unknown);
  - amdgpu: /sys/class/drm/cardN/device/mem_info_vram_{used,total}, bytes (Linux
    drivers/gpu/drm/amd/amdgpu/amdgpu_vram_mgr.c, amdgpu_mem_info_vram_*_show);
  - i915 publishes no VRAM figure (an iGPU shares system RAM): the row says unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .common import Runner
from .gpu import GpuState

DRM = Path("/sys/class/drm")
# The csv column order parse_nvidia_smi reads; nvidia-smi --help-query-gpu names the fields.
NVIDIA_QUERY = ("nvidia-smi", "--query-gpu=index,pci.bus_id,name,memory.used,memory.total",
                "--format=csv,noheader,nounits")
_CARD = re.compile(r"card\d+")  # not the connectors (card1-DP-1)
_MIB = 2**20


@dataclass
class Gpu:
    index: int  # the card's place in gpu.env's list (CUDA_VISIBLE_DEVICES order for NVIDIA)
    slot: str  # PCI address, 0000:01:00.0
    vendor: str  # nvidia | amd | intel
    name: str  # nvidia-smi's product name, else the PCI vendor:device ids
    vram_used: int | None  # bytes; None when the driver tells nothing (or cannot be asked)
    vram_total: int | None


@dataclass(frozen=True)
class Reading:
    name: str | None
    used: int | None
    total: int | None


def _slot(bus_id: str) -> str:
    """nvidia-smi writes the domain with 8 digits (00000000:01:00.0); sysfs and gpu.env with 4."""
    text = bus_id.strip().lower()
    domain, _, rest = text.partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest}" if text.count(":") == 2 else text
    except ValueError:
        return text


def _mib(text: str) -> int | None:
    try:
        return int(float(text)) * _MIB
    except ValueError:
        return None  # "[N/A]" on boards that do not report it


def parse_nvidia_smi(text: str) -> dict[str, Reading]:
    """Readings by PCI slot; a name may hold commas, so the fixed columns are taken from both ends."""
    readings = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        readings[_slot(parts[1])] = Reading(", ".join(parts[2:-2]), _mib(parts[-2]), _mib(parts[-1]))
    return readings


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def read_sysfs(drm: Path = DRM) -> dict[str, Reading]:
    """Readings by PCI slot from each DRM card's device dir (a link to the PCI device)."""
    readings = {}
    try:
        cards = sorted(p for p in drm.iterdir() if _CARD.fullmatch(p.name))
    except OSError:
        return {}
    for card in cards:
        device = card / "device"
        try:
            slot = device.resolve(strict=True).name
        except OSError:
            continue
        readings[slot] = Reading(None, _read_int(device / "mem_info_vram_used"),
                                 _read_int(device / "mem_info_vram_total"))
    return readings


def _device(label: str) -> tuple[str, str]:
    """gpu.env's '0000:01:00.0:10de:2684' -> ('0000:01:00.0', '10de:2684')."""
    parts = label.split(":")
    return ":".join(parts[:3]), ":".join(parts[3:])


def read_gpus(state: GpuState | None, run: Runner, drm: Path = DRM) -> list[Gpu]:
    """One row per card of the chosen vendor, in gpu.env's order, figures where known."""
    if state is None or state.vendor == "none":
        return []
    readings: dict[str, Reading] = {}
    if state.nvidia_ready:
        result = run(NVIDIA_QUERY)
        readings = parse_nvidia_smi(result.stdout) if result.ok else {}
    elif state.driver == "loaded":
        readings = read_sysfs(drm)
    devices = [_device(d) for d in state.devices]
    known = {slot for slot, _ in devices}
    # A card the tool reports that gpu.env lacks (an older gpu.env): shown too, after the others.
    devices += [(slot, "") for slot in readings if slot not in known and state.vendor == "nvidia"]
    rows = []
    for index, (slot, ids) in enumerate(devices):
        reading = readings.get(slot, Reading(None, None, None))
        rows.append(Gpu(index, slot, state.vendor, reading.name or ids or "unknown", reading.used, reading.total))
    return rows
