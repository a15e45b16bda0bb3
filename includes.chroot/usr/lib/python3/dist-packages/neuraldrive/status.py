"""The appliance's state in one value: what `neuraldrive status`, the operator page and the console read.

collect() asks the engine and every engine instance (version, loaded models), gpu.env (backend),
each GPU (VRAM where its driver tells it), the health check's own checks, the clock and the
persistence disk. Every part that cannot be read is None or says why; collect() never raises.
The shape (Status.to_dict) is documented in docs/appliance.md; it only grows: a new part is a
field here and one small function called from collect().
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import engine_state, healthcheck, instances, llama_server, osrelease
from .common import Runner, Settings
from .engine_state import ENGINE_TIMEOUT_S, LoadedModel, loaded_model
from .gpu import read_gpu_state
from .instances import Instance
from .ollama import Client
from .status_gpus import DRM, Gpu, read_gpus

__all__ = ["ENGINE_TIMEOUT_S", "SCHEMA", "Gpu", "Instance", "LoadedModel", "Sources", "Status",
           "collect", "loaded_model", "unit_states"]

# Bumped only when a field changes meaning or goes away (readers check it); new fields keep it.
SCHEMA = 1


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
    instances: list[Instance] = field(default_factory=list)
    health: str = "unknown"  # ok | warning | error
    health_findings: list[str] = field(default_factory=list)
    uptime_s: float | None = None
    disk_path: str = ""
    disk_free: int | None = None
    disk_total: int | None = None
    schema: int = SCHEMA
    version: str | None = None  # the NeuralDrive release (os-release IMAGE_VERSION), None if unknown
    llama: str | None = None  # llama.cpp's server: "llama.cpp MODEL  STATE"; None when not run

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
    drm: Path = DRM
    vram_warn: int = 98
    disk_warn: int = 90
    clock: Callable[[], float] = time.time
    boot_clock: Callable[[], float | None] = uptime
    # The settings the instances' own files are laid over (their addresses); None: no instances.
    settings: Settings | None = None
    instances_dir: Path | None = None  # None: instances.INSTANCES_DIR
    os_release: Path = osrelease.OS_RELEASE
    llama_conf: tuple[str, ...] = llama_server.CONF_FILES


def _engine(src: Sources, status: Status) -> None:
    engine = engine_state.ask(src.client)
    status.engine_state, status.engine_version, status.engine_error = engine.state, engine.version, engine.error
    status.loaded = engine.loaded


def _instances(src: Sources, status: Status) -> None:
    if src.settings is not None:
        status.instances = instances.collect(src.settings, src.run, src.instances_dir)


def _health(src: Sources, status: Status) -> None:
    findings = [healthcheck.Finding("error", f"engine: {status.engine_error}")
                if status.engine_error else
                healthcheck.Finding("ok", f"engine: version {status.engine_version}"),
                *healthcheck.check_vram(src.gpu_env, src.vram_warn, src.run),
                healthcheck.check_disk(src.state_dir, src.disk_warn),
                *(healthcheck.Finding("error", f"instance {i.name}: {i.engine.error or i.unit_state}")
                  for i in status.instances if i.health != "ok")]
    levels = [f.level for f in findings]
    status.health = "error" if "error" in levels else "warning" if "warning" in levels else "ok"
    status.health_findings = [f"{f.level}: {f.message}" for f in findings]


def _host(src: Sources, status: Status) -> None:
    status.uptime_s = src.boot_clock()
    status.disk_path = str(src.state_dir)
    try:
        usage = shutil.disk_usage(src.state_dir)
        status.disk_free, status.disk_total = usage.free, usage.total
    except OSError:
        pass


def collect(src: Sources) -> Status:
    gpu = read_gpu_state(src.gpu_env)
    status = Status(time=src.clock(), engine_state="down", engine_version=None, engine_error=None,
                    gpu_backend=gpu.backend if gpu else "unknown",
                    gpu_summary=gpu.summary() if gpu else f"unknown (no {src.gpu_env} yet)")
    _engine(src, status)
    status.gpus = read_gpus(gpu, src.run, src.drm)
    _instances(src, status)
    _health(src, status)
    _host(src, status)
    status.version = osrelease.image_version(src.os_release)
    _llama(src, status)
    return status


def _llama(src: Sources, status: Status) -> None:
    status.llama = llama_server.status_line(src.run, src.llama_conf)
