"""Engine instances (profile ollama.instances[]): neuraldrive-ollama@NAME, each with its own file.

/etc/neuraldrive/instances/NAME.conf (baked into the image) holds the instance's OLLAMA_HOST,
models dir, GPU set and tuning; /var/lib/neuraldrive/config/ollama@NAME.conf overrides it, as
the instance's unit reads them. `neuraldrive -i NAME ...` talks to that instance.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from .common import ConfigError, Runner, Settings, read_env_file
from .engine_state import ENGINE_TIMEOUT_S, EngineState, ask
from .ollama import Client

INSTANCES_DIR = "/etc/neuraldrive/instances"
OVERRIDE_DIR = "/var/lib/neuraldrive/config"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class _HasSettings(Protocol):
    settings: Settings


_Ctx = TypeVar("_Ctx", bound=_HasSettings)


def select(ctx: _Ctx, name: str | None) -> _Ctx:
    """The command's context, pointed at instance NAME when one is named (-i NAME)."""
    if not name:
        return ctx
    chosen = copy.copy(ctx)
    chosen.settings = settings_for(ctx.settings, name)
    return chosen


def names(directory: str | Path | None = None) -> list[str]:
    """The instances this image has, sorted."""
    try:
        return sorted(p.stem for p in Path(directory or INSTANCES_DIR).glob("*.conf") if _NAME.fullmatch(p.stem))
    except OSError:
        return []


def unit(name: str) -> str:
    return f"neuraldrive-ollama@{name}.service"


def settings_for(base: Settings, name: str, directory: str | Path | None = None,
                 override_dir: str | Path | None = None) -> Settings:
    """`base` with instance NAME's files on top (its address, models dir, pinned models...)."""
    known = names(directory)
    if not _NAME.fullmatch(name) or name not in known:
        have = ", ".join(known) or "none in this image"
        raise ConfigError(f"no engine instance {name!r} (instances: {have})")
    values = dict(base.items())
    values.update(read_env_file(Path(directory or INSTANCES_DIR) / f"{name}.conf"))
    values.update(read_env_file(Path(override_dir or OVERRIDE_DIR) / f"ollama@{name}.conf"))
    return Settings(values)


@dataclass
class Instance:
    """One engine instance in the status (routed by the gateway at /i/NAME/)."""

    name: str
    unit: str
    unit_state: str  # systemctl is-active: active | failed | ... | unknown
    url: str  # where the instance listens (loopback)
    engine: EngineState
    health: str  # ok (answering) | error (its unit is not active, or it does not answer)


def collect(base: Settings, run: Runner, directory: str | Path | None = None,
            override_dir: str | Path | None = None) -> list[Instance]:
    """Every instance's unit state, address, engine answer and loaded models."""
    found = []
    for name in names(directory):
        state = run(["systemctl", "is-active", unit(name)]).stdout.strip() or "unknown"
        client = Client(settings_for(base, name, directory, override_dir).text("OLLAMA_HOST"),
                        timeout=ENGINE_TIMEOUT_S)
        engine = ask(client)
        healthy = engine.state == "running" and state in ("active", "unknown")
        found.append(Instance(name, unit(name), state, client.url, engine, "ok" if healthy else "error"))
    return found
