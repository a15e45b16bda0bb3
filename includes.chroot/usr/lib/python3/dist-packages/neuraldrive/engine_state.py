"""What one engine says about itself: answering or not, its version, its loaded models.

The main engine and every instance (ollama.instances[]) are asked the same way; each question is
bounded, so a hung engine makes the status late by seconds, never stuck.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ollama import Client, EngineDownError, EngineError, entry_name

# An engine that takes longer than this is reported as not answering (the console must not hang).
ENGINE_TIMEOUT_S = 3.0
# keep_alive -1 puts expires_at centuries away: shown as kept loaded.
FOREVER_YEAR = 2100


@dataclass
class LoadedModel:
    name: str
    size: int  # bytes the model takes in memory
    size_vram: int  # of which on a GPU
    vram_share: float  # size_vram / size, 0..1
    expires_at: str | None  # RFC 3339, None = kept loaded
    quantization: str | None


@dataclass
class EngineState:
    state: str = "down"  # running | down (no answer) | error (answered with an error)
    version: str | None = None
    error: str | None = None
    loaded: list[LoadedModel] = field(default_factory=list)


def loaded_model(entry: dict[str, Any]) -> LoadedModel:
    """One /api/ps entry (Ollama api/types.go ProcessModelResponse)."""
    size = int(entry.get("size") or 0)
    size_vram = int(entry.get("size_vram") or 0)
    stamp = str(entry.get("expires_at") or "")
    forever = not stamp[:4].isdigit() or int(stamp[:4]) >= FOREVER_YEAR
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    return LoadedModel(entry_name(entry), size, size_vram,
                       round(size_vram / size, 4) if size else 0.0,
                       None if forever else stamp, (details or {}).get("quantization_level") or None)


def ask(client: Client) -> EngineState:
    """GET /api/version then /api/ps; never raises."""
    engine = EngineState()
    try:
        engine.version = client.version(timeout=ENGINE_TIMEOUT_S)
        engine.loaded = [loaded_model(e) for e in client.ps()]
        engine.state = "running"
    except EngineDownError as exc:
        engine.error = str(exc)
    except EngineError as exc:
        engine.state, engine.error = "error", str(exc)
    return engine
