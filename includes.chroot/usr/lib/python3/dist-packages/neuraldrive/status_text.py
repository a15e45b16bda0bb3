"""The status as `neuraldrive status` prints it (after its API and Services lines)."""

from __future__ import annotations

from .common import human_bytes
from .engine_state import LoadedModel
from .status import Status


def _duration(seconds: float) -> str:
    minutes = int(seconds) // 60
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    return (f"{days} d " if days else "") + f"{hours} h {mins:02d} min"


def _vram_pair(used: int | None, total: int | None) -> str:
    if used is None or total is None:
        return "VRAM unknown"
    return f"VRAM {human_bytes(used)} of {human_bytes(total)}"


def _model_line(label: str, m: LoadedModel) -> str:
    where = (f"{human_bytes(m.size_vram)} VRAM ({m.vram_share:.0%})" if m.size_vram
             else f"{human_bytes(m.size)} RAM")
    until = f"until {m.expires_at[:16].replace('T', ' ')}" if m.expires_at else "kept loaded"
    return f"{label:<10}{m.name:<40} {where:>20}  {until}"


def render_text(status: Status, engine_url: str) -> list[str]:
    lines = [f"GPU       {status.gpu_summary}"]
    lines += [f"{'':<10}gpu {g.index} {g.slot} {g.name}: {_vram_pair(g.vram_used, g.vram_total)}"
              for g in status.gpus]
    if status.engine_state != "running":
        lines.append(f"Engine    not answering at {engine_url}" if status.engine_state == "down"
                     else f"Engine    error: {status.engine_error}")
    else:
        lines.append(f"Engine    Ollama {status.engine_version} at {engine_url}")
        if not status.loaded:
            lines.append("Loaded    no models")
        lines += [_model_line("Loaded" if i == 0 else "", m) for i, m in enumerate(status.loaded)]
    for n, inst in enumerate(status.instances):
        engine = inst.engine
        loaded = (", ".join(sorted(m.name for m in engine.loaded)) or "no model loaded"
                  if engine.state == "running" else f"not answering ({engine.error})")
        lines.append(f"{'Instances' if n == 0 else '':<10}{inst.name:<12} {inst.unit_state:<9} {inst.url}  {loaded}")
    lines.append(f"Health    {status.health}")
    lines += [f"{'':<10}{finding}" for finding in status.health_findings if not finding.startswith("ok")]
    if status.uptime_s is not None:
        lines.append(f"Uptime    {_duration(status.uptime_s)}")
    if status.disk_free is not None and status.disk_total is not None:
        lines.append(f"Disk      {human_bytes(status.disk_free)} free of "
                     f"{human_bytes(status.disk_total)} on {status.disk_path}")
    lines.append(f"Release   NeuralDrive {status.version or 'unknown'}")
    return lines
