"""Which of the engine archive's GPU backends an image ships: a pure plan from the archive's member
names, the profile's GPU vendors and AMD backend, and the NVIDIA driver the image really holds.

Ollama's archive: `bin/ollama`, `lib/ollama/*.so*`, `lib/ollama/llama-server`, and one directory per
backend: `lib/ollama/cuda_v12/`, `cuda_v13/`, `vulkan/` (the ROCm archive adds `lib/ollama/rocm*`).
A backend whose driver the image does not carry is never written into it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ENGINE_LIB = "lib/ollama"
_BACKEND = re.compile(r"^lib/ollama/(cuda_v(\d+)|vulkan[^/]*|rocm[^/]*)(/|$)")

# Oldest NVIDIA driver each CUDA major runs on (CUDA minor version compatibility), from NVIDIA's
# "CUDA Toolkit 11.x, 12.x, and 13.x Driver Version Ranges" table:
# https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html
# (CUDA 13.x >= 580, CUDA 12.x >= 525, CUDA 11.x >= 450; newer drivers stay backward compatible).
CUDA_MIN_DRIVER: dict[int, int] = {11: 450, 12: 525, 13: 580}


@dataclass(frozen=True)
class PrunePlan:
    """`dropped`: backend directory (archive path, e.g. lib/ollama/cuda_v13) -> why it is left out."""

    dropped: dict[str, str] = field(default_factory=dict)
    kept: tuple[str, ...] = ()

    def keeps(self, member: str) -> bool:
        """False for a dropped backend directory and everything below it."""
        name = normalize(member)
        return not any(name == d or name.startswith(d + "/") for d in self.dropped)

    def as_dict(self) -> dict[str, Any]:
        return {"kept_backends": list(self.kept),
                "dropped_backends": [{"path": p, "reason": r} for p, r in sorted(self.dropped.items())]}


def normalize(member: str) -> str:
    """An archive member name without a leading `./` or trailing `/`."""
    while member.startswith("./"):
        member = member[2:]
    return member.rstrip("/")


def driver_major(version: str) -> int:
    """550.163.01 -> 550."""
    head = version.split(".", 1)[0]
    if not head.isdigit():
        raise ValueError(f"{version!r} is not an NVIDIA driver version")
    return int(head)


def _reason(backend: str, cuda_major: str | None, vendors: tuple[str, ...], amd_backend: str,
            nvidia_driver: str | None) -> str | None:
    """Why `backend` cannot be used in this image, or None when it can."""
    if cuda_major is not None:
        if "nvidia" not in vendors:
            return "CUDA serves NVIDIA GPUs only and gpu.vendors has no nvidia"
        major = int(cuda_major)
        needed = CUDA_MIN_DRIVER.get(major)
        if needed is None:
            return f"CUDA {major}: no minimum NVIDIA driver known to builder/image/backends.py"
        if nvidia_driver is None:
            raise ValueError("gpu.vendors has nvidia but the image's NVIDIA driver version is unknown")
        if driver_major(nvidia_driver) < needed:
            return f"CUDA {major} needs NVIDIA driver >= {needed}; the image has {nvidia_driver}"
        return None
    if backend.startswith("vulkan"):
        # Mesa's Vulkan drivers: RADV for AMD, ANV for Intel (NVIDIA images use CUDA).
        if "amd" not in vendors and "intel" not in vendors:
            return "Vulkan serves AMD and Intel GPUs here and gpu.vendors has neither"
        return None
    if "amd" not in vendors:
        return "ROCm serves AMD GPUs only and gpu.vendors has no amd"
    if amd_backend != "rocm":
        return f"gpu.amd.backend is {amd_backend}, not rocm"
    return None


def plan_prune(members: Iterable[str], vendors: tuple[str, ...], amd_backend: str,
               nvidia_driver: str | None) -> PrunePlan:
    """Keep or drop each backend directory found among `members`."""
    dropped: dict[str, str] = {}
    kept: set[str] = set()
    for member in members:
        match = _BACKEND.match(normalize(member))
        if match is None:
            continue
        path = f"{ENGINE_LIB}/{match.group(1)}"
        if path in dropped or path in kept:
            continue
        reason = _reason(match.group(1), match.group(2), vendors, amd_backend, nvidia_driver)
        if reason is None:
            kept.add(path)
        else:
            dropped[path] = reason
    return PrunePlan(dropped=dropped, kept=tuple(sorted(kept)))
