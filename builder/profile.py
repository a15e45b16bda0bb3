"""Profiles: YAML files under config/profiles, layered with `extends:`, parsed once into frozen dataclasses.

Every value is checked here so later stages can trust it; errors read `file: field: what is wrong`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import ProfileError
from .escape import describe, first_control
from .profile_checks import GPU_VENDORS, check_profile  # also: the other vocabularies, file paths
from .profile_yaml import read_yaml, shown

PROFILES_DIR = Path(__file__).resolve().parent.parent / "config" / "profiles"
MAX_STRING = 4096


@dataclass(frozen=True)
class Mirrors:
    bootstrap: str = "http://deb.debian.org/debian/"
    chroot: str = "http://deb.debian.org/debian/"
    binary: str = "http://deb.debian.org/debian/"
    security: str = "http://deb.debian.org/debian-security/"


@dataclass(frozen=True)
class Debian:
    suite: str = "trixie"
    mirrors: Mirrors = field(default_factory=Mirrors)
    areas: tuple[str, ...] = ("main", "contrib", "non-free", "non-free-firmware")
    # Extra suites (e.g. trixie-backports) added as apt sources in the image.
    backports: bool = False


@dataclass(frozen=True)
class Image:
    name: str = "neuraldrive"
    version: str = "0.1.0"
    volume: str = "NEURALDRIVE"
    compression: str = "zstd"
    # mksquashfs -Xcompression-level; None keeps mksquashfs's default (zstd: 15, xz: n/a).
    compression_level: int | None = None
    hostname: str = "neuraldrive"


@dataclass(frozen=True)
class GpuTune:
    enabled: bool = False
    persistence_mode: bool = True
    power_limit_watts: int | None = None
    locked_clocks_mhz: int | None = None


@dataclass(frozen=True)
class GpuAmd:
    backend: str = "vulkan"


@dataclass(frozen=True)
class Gpu:
    vendors: tuple[str, ...] = GPU_VENDORS
    tune: GpuTune = field(default_factory=GpuTune)
    amd: GpuAmd = field(default_factory=GpuAmd)


@dataclass(frozen=True)
class Instance:
    """An extra engine instance (neuraldrive-ollama@NAME) with its own port, GPUs and models."""

    name: str
    port: int
    gpus: str = ""
    models_dir: str = ""


@dataclass(frozen=True)
class ArchivePin:
    """An engine archive pinned in the profile itself instead of the lock file (test builds)."""

    version: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Ollama:
    # None: the archives pinned in config/artifacts.lock.yaml
    archive: ArchivePin | None = None
    keep_alive: str = "5m"
    max_loaded_models: int = 0
    num_parallel: int = 1
    max_queue: int | None = None
    flash_attention: bool | None = None
    kv_cache_type: str | None = None
    context_length: int | None = None
    num_threads: int | None = None
    numa_node: int | None = None
    cuda_visible_devices: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    instances: tuple[Instance, ...] = ()


@dataclass(frozen=True)
class IdleManager:
    enabled: bool = True
    idle_timeout: int = 300
    monitoring_interval: int = 30


@dataclass(frozen=True)
class HealthCheck:
    enabled: bool = True
    interval_minutes: int = 2
    api_timeout: int = 10
    vram_warn_percent: int = 98
    disk_warn_percent: int = 90


@dataclass(frozen=True)
class Gateway:
    port: int = 8443
    mdns: bool = False


@dataclass(frozen=True)
class Ssh:
    enabled: bool = False
    authorized_keys: str | None = None  # path on the build host, relative to the profile file


@dataclass(frozen=True)
class Preload:
    """Models `build.py usb --profile` copies onto the stick's persistence partition."""

    store: str | None = None  # an Ollama models dir on the build host, relative to the profile file
    models: tuple[str, ...] = ()  # name[:tag] or namespace/name[:tag]


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    release: bool = True
    description: str = ""
    image: Image = field(default_factory=Image)
    debian: Debian = field(default_factory=Debian)
    gpu: Gpu = field(default_factory=Gpu)
    ollama: Ollama = field(default_factory=Ollama)
    idle: IdleManager = field(default_factory=IdleManager)
    healthcheck: HealthCheck = field(default_factory=HealthCheck)
    gateway: Gateway = field(default_factory=Gateway)
    ssh: Ssh = field(default_factory=Ssh)
    preload: Preload = field(default_factory=Preload)
    packages: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_profile_path(name_or_path: str) -> Path:
    """A bare name means config/profiles/NAME.yaml; anything with a slash or suffix is a path."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
    else:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ProfileError(f"{shown(path)}: no such profile (known: {known})")
    return path.resolve()


def load_profile(name_or_path: str) -> Profile:
    path = resolve_profile_path(name_or_path)
    data = _load_layered(path, seen=())
    preset = {"name": path.stem, "source": str(path)}
    try:
        profile: Profile = _build(Profile, data, "", preset)
    except _FieldError as exc:
        raise ProfileError(f"{shown(path)}: {shown(exc.field)}: {shown(exc.message)}") from None
    check_profile(profile, path)
    return profile


def _load_layered(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise ProfileError(f"{shown(path)}: extends: cycle ({shown(chain)})")
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{shown(path)}: top level must be a mapping, not {type(raw).__name__}")
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str) or first_control(parent_name) is not None:
        raise ProfileError(f"{shown(path)}: extends: must be a profile name")
    parent_path = (PROFILES_DIR / f"{parent_name}.yaml") if "/" not in parent_name else path.parent / parent_name
    if not parent_path.is_file():
        raise ProfileError(f"{shown(path)}: extends: no profile named {parent_name!r}")
    base = _load_layered(parent_path.resolve(), (*seen, path))
    # `release` is a property of each file, never inherited: a test profile must say so itself.
    base.pop("release", None)
    return _merge(base, raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _FieldError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


def _build(cls: type[Any], data: Any, prefix: str, preset: dict[str, Any] | None = None) -> Any:
    """`preset`: fields the loader fills (never keys of the file); checked like any other value."""
    where = prefix.rstrip(".") or "(top)"
    if not isinstance(data, dict):
        raise _FieldError(where, f"must be a mapping, not {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(preset or {})
    unknown = sorted(set(data) - names)
    if unknown:
        raise _FieldError(f"{prefix}{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(names))})")
    items = {**data, **(preset or {})}
    kwargs = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in items.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = re.findall(r"'(\w+)'", str(exc))
        raise _FieldError(f"{prefix}{missing[0] if missing else ''}".rstrip("."), "required") from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise _FieldError(where, f"must be a list, not {_kind(value)}")
        return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _FieldError(where, f"must be a mapping, not {_kind(value)}")
        return {str(_convert(str, k, where)): _convert(str, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(where, f"must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(where, f"must be an integer, not {value!r}")
        return value
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _FieldError(where, f"must be a string, not {_kind(value)}")
        text = str(value)
        # One check for every string field: no value may start a new line (or look like one) in the
        # shell, unit, env and Caddy files it is rendered into.
        bad = first_control(text)
        if bad is not None:
            raise _FieldError(where, f"control character {describe(bad)} in {text[:60]!r}")
        if len(text) > MAX_STRING:
            raise _FieldError(where, f"longer than {MAX_STRING} characters")
        return text
    raise _FieldError(where, f"unsupported type {hint}")  # pragma: no cover - schema bug
