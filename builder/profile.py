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

import yaml

from .errors import ProfileError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "config" / "profiles"

GPU_VENDORS = ("nvidia", "amd", "intel")
# Vulkan (Mesa's RADV, from Ollama's main archive) or ROCm (its separate ~1 GB archive).
AMD_BACKENDS = ("vulkan", "rocm")
COMPRESSIONS = ("zstd", "xz", "gzip", "lzo", "lz4")
COMPRESSION_LEVELS = {"zstd": (1, 22), "gzip": (1, 9), "lzo": (1, 9)}  # what mksquashfs accepts
ARCHIVE_AREAS = ("main", "contrib", "non-free", "non-free-firmware")
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
_GO_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^-?\d+$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]+(/[a-z0-9-]+)?$")
_MODEL = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?(:[A-Za-z0-9._-]{1,128})?$")
_URL = re.compile(r"^(https?|file)://\S+$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+~-]*$")


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
        raise ProfileError(f"{path}: no such profile (known: {known})")
    return path.resolve()


def load_profile(name_or_path: str) -> Profile:
    path = resolve_profile_path(name_or_path)
    data = _load_layered(path, seen=())
    name = path.stem
    try:
        profile: Profile = _build(Profile, {"name": name, "source": str(path), **data}, "")
    except _FieldError as exc:
        raise ProfileError(f"{path}: {exc.field}: {exc.message}") from None
    _check_semantics(profile, path)
    return profile


def _load_layered(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise ProfileError(f"{path}: extends: cycle ({chain})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: top level must be a mapping, not {type(raw).__name__}")
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str):
        raise ProfileError(f"{path}: extends: must be a profile name")
    parent_path = (PROFILES_DIR / f"{parent_name}.yaml") if "/" not in parent_name else path.parent / parent_name
    if not parent_path.is_file():
        raise ProfileError(f"{path}: extends: no profile named {parent_name!r}")
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


def _build(cls: type[Any], data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "(top)"
    if not isinstance(data, dict):
        raise _FieldError(where, f"must be a mapping, not {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _FieldError(f"{prefix}{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
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
        return str(value)
    raise _FieldError(where, f"unsupported type {hint}")  # pragma: no cover - schema bug


def _check_semantics(p: Profile, path: Path) -> None:
    def bad(field_name: str, message: str) -> ProfileError:
        return ProfileError(f"{path}: {field_name}: {message}")

    if not _NAME.match(p.name):
        raise bad("name", f"profile file name {p.name!r} must be lower-case letters, digits and '-'")
    if not _NAME.match(p.image.name):
        raise bad("image.name", f"{p.image.name!r} must be lower-case letters, digits and '-'")
    if not _NAME.match(p.image.hostname):
        raise bad("image.hostname", f"{p.image.hostname!r} is not a valid host name")
    if not _VERSION.match(p.image.version):
        raise bad("image.version", f"{p.image.version!r} is not a version")
    if not re.match(r"^[A-Za-z0-9_ -]{1,32}$", p.image.volume):
        raise bad("image.volume", f"{p.image.volume!r}: 1-32 letters, digits, '_', '-' or spaces")
    if p.image.compression not in COMPRESSIONS:
        raise bad("image.compression", f"{p.image.compression!r} is not one of {', '.join(COMPRESSIONS)}")
    level = p.image.compression_level
    if level is not None:
        span = COMPRESSION_LEVELS.get(p.image.compression)
        if span is None:
            raise bad("image.compression_level", f"{p.image.compression} takes no compression level")
        if not span[0] <= level <= span[1]:
            raise bad("image.compression_level", f"{level} is outside {span[0]}-{span[1]} for {p.image.compression}")
    if p.debian.suite != "trixie":
        raise bad("debian.suite", f"{p.debian.suite!r}: only trixie (Debian 13) is supported")
    for key in ("bootstrap", "chroot", "binary", "security"):
        url = getattr(p.debian.mirrors, key)
        if not _URL.match(url):
            raise bad(f"debian.mirrors.{key}", f"{url!r} is not an http(s):// or file:// URL")
    for area in p.debian.areas:
        if area not in ARCHIVE_AREAS:
            raise bad("debian.areas", f"{area!r} is not one of {', '.join(ARCHIVE_AREAS)}")
    if "main" not in p.debian.areas:
        raise bad("debian.areas", "must include main")
    for vendor in p.gpu.vendors:
        if vendor not in GPU_VENDORS:
            raise bad("gpu.vendors", f"{vendor!r} is not one of {', '.join(GPU_VENDORS)}")
    if len(set(p.gpu.vendors)) != len(p.gpu.vendors):
        raise bad("gpu.vendors", "lists a vendor twice")
    if p.gpu.amd.backend not in AMD_BACKENDS:
        raise bad("gpu.amd.backend", f"{p.gpu.amd.backend!r} is not one of {', '.join(AMD_BACKENDS)}")
    if p.gpu.amd.backend == "rocm" and "amd" not in p.gpu.vendors:
        raise bad("gpu.amd.backend", "rocm needs amd in gpu.vendors")
    needs = {"nvidia": ("contrib", "non-free", "non-free-firmware"), "amd": ("non-free-firmware",)}
    for vendor in p.gpu.vendors:
        for area in needs.get(vendor, ()):
            if area not in p.debian.areas:
                raise bad("debian.areas", f"gpu vendor {vendor} needs archive area {area!r}")
    for key in ("power_limit_watts", "locked_clocks_mhz"):
        value = getattr(p.gpu.tune, key)
        if value is not None and not 1 <= value <= 100000:
            raise bad(f"gpu.tune.{key}", f"{value} is out of range")
    o = p.ollama
    if o.archive is not None:
        if not re.match(r"^[0-9a-f]{64}$", o.archive.sha256):
            raise bad("ollama.archive.sha256", f"{o.archive.sha256!r} is not a sha256 (64 hex digits)")
        if not _URL.match(o.archive.url):
            raise bad("ollama.archive.url", f"{o.archive.url!r} is not a URL")
        if not _VERSION.match(o.archive.version):
            raise bad("ollama.archive.version", f"{o.archive.version!r} is not a version")
    if not _GO_DURATION.match(o.keep_alive):
        raise bad("ollama.keep_alive", f"{o.keep_alive!r} is not a duration (5m, 1h, 300, -1)")
    for key in ("max_loaded_models", "num_parallel", "max_queue", "context_length", "num_threads", "numa_node"):
        value = getattr(o, key)
        if value is not None and value < 0:
            raise bad(f"ollama.{key}", f"{value} must not be negative")
    if o.num_parallel < 1:
        raise bad("ollama.num_parallel", "must be at least 1")
    if o.kv_cache_type is not None and o.kv_cache_type not in KV_CACHE_TYPES:
        raise bad("ollama.kv_cache_type", f"{o.kv_cache_type!r} is not one of {', '.join(KV_CACHE_TYPES)}")
    if o.cuda_visible_devices is not None and not re.match(r"^[0-9A-Za-z,-]+$", o.cuda_visible_devices):
        raise bad("ollama.cuda_visible_devices", f"{o.cuda_visible_devices!r} is not a device list")
    for key, value in o.extra_env.items():
        if not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
            raise bad(f"ollama.extra_env.{key}", "not an environment variable name")
        if key == "OLLAMA_HOST":
            raise bad(f"ollama.extra_env.{key}", "the engine listens on loopback only; use gateway.port")
        if "\n" in value:
            raise bad(f"ollama.extra_env.{key}", "must be a single line")
    ports = {p.gateway.port: "gateway.port", 11434: "the engine port"}
    for i, inst in enumerate(o.instances):
        where = f"ollama.instances[{i}]"
        if not _NAME.match(inst.name):
            raise bad(f"{where}.name", f"{inst.name!r} must be lower-case letters, digits and '-'")
        if inst.port in ports:
            raise bad(f"{where}.port", f"{inst.port} is already used by {ports[inst.port]}")
        ports[inst.port] = f"{where}.port"
        if not 1024 <= inst.port <= 65535:
            raise bad(f"{where}.port", f"{inst.port} is not in 1024-65535")
        if inst.gpus and not re.match(r"^[0-9A-Za-z,-]+$", inst.gpus):
            raise bad(f"{where}.gpus", f"{inst.gpus!r} is not a device list")
        if inst.models_dir and not inst.models_dir.startswith("/var/lib/neuraldrive/"):
            raise bad(f"{where}.models_dir", "must be under /var/lib/neuraldrive/ (the persistent state)")
    if not 1 <= p.gateway.port <= 65535 or p.gateway.port == 11434:
        raise bad("gateway.port", f"{p.gateway.port} is not a usable port")
    if p.idle.idle_timeout < 1 or p.idle.monitoring_interval < 1:
        raise bad("idle", "idle_timeout and monitoring_interval must be at least 1 second")
    if not 1 <= p.healthcheck.interval_minutes <= 1440:
        raise bad("healthcheck.interval_minutes", f"{p.healthcheck.interval_minutes} is not in 1-1440")
    if p.ssh.authorized_keys is not None:
        keys = authorized_keys_path(p)
        if keys is None or not keys.is_file():
            raise bad("ssh.authorized_keys", f"{p.ssh.authorized_keys!r}: no such file")
        if not p.ssh.enabled:
            raise bad("ssh.authorized_keys", "given but ssh.enabled is false")
    for pkg in p.packages:
        if not _PKG.match(pkg):
            raise bad("packages", f"{pkg!r} is not a Debian package name")
    for model in p.preload.models:
        if not _MODEL.match(model):
            raise bad("preload.models", f"{model!r} is not an Ollama model name (name[:tag])")
    if p.preload.models:
        store = preload_store_path(p)
        if store is None or not (store / "manifests").is_dir():
            raise bad("preload.store", f"{p.preload.store!r}: not an Ollama models dir (needs manifests/)")


def preload_store_path(p: Profile) -> Path | None:
    if p.preload.store is None:
        return None
    return (Path(p.source).parent / p.preload.store).resolve()


def authorized_keys_path(p: Profile) -> Path | None:
    if p.ssh.authorized_keys is None:
        return None
    return (Path(p.source).parent / p.ssh.authorized_keys).resolve()
