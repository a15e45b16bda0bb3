"""GPU facts: which vendors exist, how to find their cards on the PCI bus, and gpu.env.

The vendor table is data: adding a vendor means adding a row, not another `if`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .common import read_env_file

# PCI base class 03 (display): VGA-compatible, 3D (headless compute cards), other display.
DISPLAY_CLASSES = frozenset({"0300", "0302", "0380"})


@dataclass(frozen=True)
class Vendor:
    name: str
    pci_id: str
    # modprobe -a these; if that fails the driver counts as missing.
    modules: tuple[str, ...]
    # Tried after the modules above; failing is normal (e.g. an older kernel or card).
    optional_modules: tuple[str, ...]
    # Ollama backend the engine computes with once the driver is loaded (the image's
    # NEURALDRIVE_GPU_BACKENDS may name another one, e.g. amd=rocm).
    backend: str


# In order of preference: on a box with several, the engine uses the first one present.
# Intel comes last because its GPUs are the integrated ones next to a discrete card.
VENDORS: tuple[Vendor, ...] = (
    # Debian's packaged driver renames the modules nvidia-current*.
    Vendor("nvidia", "10de", ("nvidia-current", "nvidia-current-uvm", "nvidia-current-drm"),
           (), "cuda"),
    # AMD and Intel compute through Ollama's bundled Vulkan backend (on by default since 0.30)
    # on Mesa's RADV / ANV drivers; ROCm is the amd profile's opt-in.
    Vendor("amd", "1002", ("amdgpu",), (), "vulkan"),
    # Intel: i915 drives iGPUs and Arc (DG2); xe binds only the newest cards (best effort).
    Vendor("intel", "8086", ("i915",), ("xe",), "vulkan"),
)
BACKENDS = ("cuda", "vulkan", "rocm", "cpu")
VENDOR_BY_PCI_ID = {v.pci_id: v for v in VENDORS}
VENDOR_BY_NAME = {v.name: v for v in VENDORS}


@dataclass(frozen=True, order=True)
class PciDevice:
    slot: str  # with domain: 0000:01:00.0
    class_code: str  # 4 hex digits: 0300
    vendor_id: str
    device_id: str

    @property
    def vendor(self) -> Vendor | None:
        return VENDOR_BY_PCI_ID.get(self.vendor_id)

    def label(self) -> str:
        return f"{self.slot}:{self.vendor_id}:{self.device_id}"


def _full_slot(slot: str) -> str:
    return slot if slot.count(":") == 2 else f"0000:{slot}"


def scan_sysfs(devices_dir: Path) -> list[PciDevice]:
    """PCI devices from /sys/bus/pci/devices/*/{class,vendor,device} (values like 0x030000)."""
    found = []
    for entry in sorted(devices_dir.iterdir()):
        try:
            klass, vendor, device = (
                (entry / name).read_text(encoding="ascii").strip().lower().removeprefix("0x")
                for name in ("class", "vendor", "device"))
        except (OSError, UnicodeDecodeError):
            continue  # a device that vanished or a stray file: not a GPU we can use
        found.append(PciDevice(_full_slot(entry.name), klass[:4], vendor, device))
    return found


# 01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [...] [10de:2204] (rev a1)
_LSPCI_LINE = re.compile(
    r"^(?P<slot>(?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s.*?\[(?P<cls>[0-9a-f]{4})\]:"
    r".*\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\]", re.IGNORECASE)


def parse_lspci(text: str) -> list[PciDevice]:
    """PCI devices from `lspci -nn` output (lines it cannot read are skipped)."""
    found = []
    for line in text.splitlines():
        m = _LSPCI_LINE.match(line.strip())
        if m:
            found.append(PciDevice(_full_slot(m["slot"].lower()), m["cls"].lower(),
                                   m["vendor"].lower(), m["device"].lower()))
    return sorted(found)


@dataclass(frozen=True)
class Detection:
    present: tuple[str, ...]  # vendors with a display device in this machine
    supported: tuple[Vendor, ...]  # present and with a driver in this image: load these
    chosen: Vendor | None  # what the engine will use
    devices: tuple[PciDevice, ...]  # the chosen vendor's cards


def detect(devices: Iterable[PciDevice], image_vendors: Iterable[str]) -> Detection:
    gpus = [d for d in devices if d.class_code in DISPLAY_CLASSES and d.vendor is not None]
    present = tuple(v.name for v in VENDORS if any(d.vendor == v for d in gpus))
    wanted = set(image_vendors)
    supported = tuple(v for v in VENDORS if v.name in present and v.name in wanted)
    chosen = supported[0] if supported else None
    chosen_devices = tuple(sorted(d for d in gpus if d.vendor == chosen)) if chosen else ()
    return Detection(present, supported, chosen, chosen_devices)


@dataclass(frozen=True)
class GpuState:
    """The contents of /run/neuraldrive/gpu.env."""

    present: tuple[str, ...] = ()
    vendor: str = "none"
    count: int = 0
    devices: tuple[str, ...] = ()
    driver: str = "none"  # loaded | missing | none
    backend: str = "cpu"  # one of BACKENDS

    def render(self) -> str:
        lines = [
            "# Written at boot by neuraldrive-gpu-detect.service; read by the engine, gpu-tune,",
            "# the health check and `neuraldrive status`. Regenerated on every boot: do not edit.",
            f'NEURALDRIVE_GPU_PRESENT="{" ".join(self.present)}"',
            f'NEURALDRIVE_GPU_VENDOR="{self.vendor}"',
            f'NEURALDRIVE_GPU_COUNT="{self.count}"',
            f'NEURALDRIVE_GPU_DEVICES="{" ".join(self.devices)}"',
            f'NEURALDRIVE_GPU_DRIVER="{self.driver}"',
            f'NEURALDRIVE_GPU_BACKEND="{self.backend}"',
            "# Ollama's Vulkan backend only when it is the chosen one: not beside CUDA or ROCm (an",
            "# Intel iGPU next to an NVIDIA card would take layers), not on a CPU-only machine.",
            f'OLLAMA_VULKAN="{1 if self.backend == "vulkan" else 0}"',
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_env(cls, values: Mapping[str, str]) -> GpuState:
        try:
            count = int(values.get("NEURALDRIVE_GPU_COUNT", "0") or 0)
        except ValueError:
            count = 0
        return cls(
            present=tuple(values.get("NEURALDRIVE_GPU_PRESENT", "").split()),
            vendor=values.get("NEURALDRIVE_GPU_VENDOR", "none") or "none",
            count=count,
            devices=tuple(values.get("NEURALDRIVE_GPU_DEVICES", "").split()),
            driver=values.get("NEURALDRIVE_GPU_DRIVER", "none") or "none",
            backend=values.get("NEURALDRIVE_GPU_BACKEND", "cpu") or "cpu",
        )

    @property
    def nvidia_ready(self) -> bool:
        return self.vendor == "nvidia" and self.driver == "loaded"

    def summary(self) -> str:
        """One line for people: what the engine runs on, and why not on a GPU if it does not."""
        if self.vendor == "none":
            if self.present:
                return f"none usable (found {' '.join(self.present)}; no driver in this image); backend cpu"
            return "none found; backend cpu"
        text = f"{self.vendor} x{self.count}, driver {self.driver}, backend {self.backend}"
        return text + (f" ({' '.join(self.devices)})" if self.devices else "")


def read_gpu_state(path: str | Path) -> GpuState | None:
    """None when gpu-detect has not run (no file)."""
    if not Path(path).is_file():
        return None
    return GpuState.from_env(read_env_file(path))
