"""The appliance's state in one value: what `neuraldrive status`, the operator page and the console read.

collect() asks the engine (version, loaded models), gpu.env (backend), the GPUs (VRAM where a
tool or sysfs tells it), the health check's own checks, the clock and the persistence disk.
Every part that cannot be read is None or says why; collect() itself never raises.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import healthcheck
from .common import Runner, human_bytes
from .gpu import read_gpu_state
from .ollama import Client, EngineDownError, EngineError, entry_name

# An engine that takes longer than this is reported as not answering (the console must not hang).
ENGINE_TIMEOUT_S = 3.0
# keep_alive -1 puts expires_at centuries away: shown as kept loaded.
FOREVER_YEAR = 2100
AMD_SYSFS = Path("/sys/class/drm")


@dataclass
class Gpu:
    index: int
    name: str
    vram_used: int | None  # bytes, None when nothing tells
    vram_total: int | None


@dataclass
class LoadedModel:
    name: str
    size: int  # bytes the model takes in memory
    size_vram: int  # of which on a GPU
    vram_share: float  # size_vram / size, 0..1
    expires_at: str | None  # RFC 3339, None = kept loaded
    quantization: str | None


@dataclass
class Status:
    time: float  # when collected (Unix time)
    engine_state: str  # running | down | error
    engine_version: str | None
    engine_error: str | None
    gpu_backend: str
    gpu_summary: str
    gpus: list[Gpu] = field(default_factory=list)
    loaded: list[LoadedModel] = field(default_factory=list)
    health: str = "unknown"  # ok | warning | error
    health_findings: list[str] = field(default_factory=list)
    uptime_s: float | None = None
    disk_path: str = ""
    disk_free: int | None = None
    disk_total: int | None = None

    @property
    def vram_used(self) -> int | None:
        """VRAM the GPUs report in use; else what the loaded models hold; None on a CPU box."""
        known = [g.vram_used for g in self.gpus if g.vram_used is not None]
        if known:
            return sum(known)
        if self.gpu_backend in ("cpu", "unknown"):
            return None
        return sum(m.size_vram for m in self.loaded)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "vram_used": self.vram_used}


def unit_states(run: Runner) -> list[tuple[str, str]] | str:
    """(unit, active state) of every neuraldrive-* unit, or why they could not be listed."""
    listed = run(["systemctl", "list-unit-files", "--no-legend", "--no-pager", "--plain", "neuraldrive-*"])
    if not listed.ok:
        return f"unknown (systemctl: {listed.reason()})"
    units = [line.split()[0] for line in listed.stdout.splitlines()
             if line.strip() and "@." not in line.split()[0]]
    if not units:
        return "none installed"
    # is-active exits non-zero when any unit is not active, but still prints every state.
    states = run(["systemctl", "is-active", *units]).stdout.split()
    if len(states) != len(units):
        return "unknown (systemctl is-active gave no answer)"
    return list(zip(units, states, strict=True))


def loaded_model(entry: dict[str, Any]) -> LoadedModel:
    """One /api/ps entry."""
    size = int(entry.get("size") or 0)
    size_vram = int(entry.get("size_vram") or 0)
    stamp = str(entry.get("expires_at") or "")
    forever = not stamp[:4].isdigit() or int(stamp[:4]) >= FOREVER_YEAR
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    return LoadedModel(entry_name(entry), size, size_vram,
                       round(size_vram / size, 4) if size else 0.0,
                       None if forever else stamp, (details or {}).get("quantization_level") or None)


def nvidia_gpus(run: Runner) -> list[Gpu]:
    result = run(["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total",
                  "--format=csv,noheader,nounits"])
    if not result.ok:
        return []
    gpus = []
    for line in result.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])) * 2**20,
                            int(float(parts[3])) * 2**20))
        except ValueError:
            continue
    return gpus


def sysfs_gpus(drm: Path = AMD_SYSFS) -> list[Gpu]:
    """amdgpu publishes mem_info_vram_used/total in bytes under each card's device dir."""
    gpus = []
    for index, card in enumerate(sorted(drm.glob("card[0-9]*/device/mem_info_vram_total"))):
        try:
            total = int(card.read_text().strip())
            used = int((card.parent / "mem_info_vram_used").read_text().strip())
        except (OSError, ValueError):
            continue
        gpus.append(Gpu(index, card.parent.parent.name, used, total))
    return gpus


def uptime() -> float | None:
    """Seconds since boot (CLOCK_BOOTTIME: works where /proc/uptime is hidden by ProcSubset=pid)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return None


@dataclass
class Sources:
    """Where collect() looks; tests point these at recorded answers."""

    client: Client
    gpu_env: Path
    state_dir: Path
    run: Runner
    drm: Path = AMD_SYSFS
    vram_warn: int = 98
    disk_warn: int = 90
    clock: Callable[[], float] = time.time
    boot_clock: Callable[[], float | None] = uptime


def collect(src: Sources) -> Status:
    gpu = read_gpu_state(src.gpu_env)
    status = Status(time=src.clock(), engine_state="down", engine_version=None, engine_error=None,
                    gpu_backend=gpu.backend if gpu else "unknown",
                    gpu_summary=gpu.summary() if gpu else f"unknown (no {src.gpu_env} yet)")
    try:
        status.engine_version = src.client.version(timeout=ENGINE_TIMEOUT_S)
        status.loaded = [loaded_model(e) for e in src.client.ps()]
        status.engine_state = "running"
    except EngineDownError as exc:
        status.engine_error = str(exc)
    except EngineError as exc:
        status.engine_state, status.engine_error = "error", str(exc)
    if gpu is not None and gpu.nvidia_ready:
        status.gpus = nvidia_gpus(src.run)
    elif gpu is not None and gpu.vendor == "amd":
        status.gpus = sysfs_gpus(src.drm)
    findings = [healthcheck.Finding("error", f"engine: {status.engine_error}")
                if status.engine_error else
                healthcheck.Finding("ok", f"engine: version {status.engine_version}"),
                *healthcheck.check_vram(src.gpu_env, src.vram_warn, src.run),
                healthcheck.check_disk(src.state_dir, src.disk_warn)]
    levels = [f.level for f in findings]
    status.health = "error" if "error" in levels else "warning" if "warning" in levels else "ok"
    status.health_findings = [f"{f.level}: {f.message}" for f in findings]
    status.uptime_s = src.boot_clock()
    status.disk_path = str(src.state_dir)
    try:
        usage = shutil.disk_usage(src.state_dir)
        status.disk_free, status.disk_total = usage.free, usage.total
    except OSError:
        pass
    return status


def _duration(seconds: float) -> str:
    minutes = int(seconds) // 60
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    return (f"{days} d " if days else "") + f"{hours} h {mins:02d} min"


def _vram_pair(used: int | None, total: int | None) -> str:
    if used is None or total is None:
        return "VRAM unknown"
    return f"VRAM {human_bytes(used)} of {human_bytes(total)}"


def render_text(status: Status, engine_url: str) -> list[str]:
    """The lines `neuraldrive status` prints after its API and Services lines."""
    lines = [f"GPU       {status.gpu_summary}"]
    lines += [f"{'':<10}gpu {g.index} {g.name}: {_vram_pair(g.vram_used, g.vram_total)}"
              for g in status.gpus]
    if status.engine_state != "running":
        lines.append(f"Engine    not answering at {engine_url}" if status.engine_state == "down"
                     else f"Engine    error: {status.engine_error}")
    else:
        lines.append(f"Engine    Ollama {status.engine_version} at {engine_url}")
        if not status.loaded:
            lines.append("Loaded    no models")
        for i, m in enumerate(status.loaded):
            where = (f"{human_bytes(m.size_vram)} VRAM ({m.vram_share:.0%})" if m.size_vram
                     else f"{human_bytes(m.size)} RAM")
            until = f"until {m.expires_at[:16].replace('T', ' ')}" if m.expires_at else "kept loaded"
            lines.append(f"{'Loaded' if i == 0 else '':<10}{m.name:<40} {where:>20}  {until}")
    lines.append(f"Health    {status.health}")
    lines += [f"{'':<10}{finding}" for finding in status.health_findings if not finding.startswith("ok")]
    if status.uptime_s is not None:
        lines.append(f"Uptime    {_duration(status.uptime_s)}")
    if status.disk_free is not None and status.disk_total is not None:
        lines.append(f"Disk      {human_bytes(status.disk_free)} free of "
                     f"{human_bytes(status.disk_total)} on {status.disk_path}")
    return lines
