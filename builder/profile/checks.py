"""Checks on a built Profile that its types cannot express: names, URLs, ranges, port clashes, files.

Every pattern is matched with re.fullmatch (`^…$` with re.match accepts a trailing newline).
Errors read `file: field: what is wrong`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import facts
from builder.errors import ProfileError
from builder.profile.llama_checks import check_llama_server
from builder.profile.sshkeys import read_authorized_keys
from builder.profile.strict_yaml import shown

if TYPE_CHECKING:
    from builder.profile.schema import Profile

GPU_VENDORS = ("nvidia", "amd", "intel")
# Vulkan (Mesa's RADV, from Ollama's main archive) or ROCm (its separate ~1 GB archive).
AMD_BACKENDS = ("vulkan", "rocm")
COMPRESSIONS = ("zstd", "xz", "gzip", "lzo", "lz4")
COMPRESSION_LEVELS = {"zstd": (1, 22), "gzip": (1, 9), "lzo": (1, 9)}  # what mksquashfs accepts
ARCHIVE_AREAS = ("main", "contrib", "non-free", "non-free-firmware")
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
ENGINE_PORT = facts.OLLAMA_PORT
MAX_INSTANCES = 16
MAX_EXTRA_ENV = 64
MAX_KEEP_ALIVE_S = 8760 * 3600  # a year; negative means "forever" to Ollama
# Integer fields and their sane bounds (None values are "unset" and skip the check).
INT_RANGES: dict[str, tuple[int, int]] = {
    "ollama.max_loaded_models": (0, 64),
    "ollama.num_parallel": (1, 256),
    "ollama.max_queue": (0, 1 << 20),
    "ollama.context_length": (1, 1 << 24),
    "ollama.num_threads": (0, 4096),
    "ollama.numa_node": (0, 1023),
    "idle.idle_timeout": (1, 7 * 86400),
    "idle.monitoring_interval": (1, 86400),
    "healthcheck.interval_minutes": (1, 1440),
    "healthcheck.api_timeout": (1, 3600),
    "healthcheck.vram_warn_percent": (1, 100),
    "healthcheck.disk_warn_percent": (1, 100),
    "gateway.port": (1, 65535),
    "gpu.tune.power_limit_watts": (1, 100000),
    "gpu.tune.locked_clocks_mhz": (1, 100000),
}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(r"-?(?:\d+|(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_PKG = re.compile(r"[a-z0-9][a-z0-9+.-]+(/[a-z0-9-]+)?")
_MODEL = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?(:[A-Za-z0-9._-]{1,128})?")
_URL = re.compile(r"(https?|file)://[!#-~]+")  # printable ASCII, no blank, no quote
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~-]{0,63}")
_VOLUME = re.compile(r"[A-Za-z0-9_ -]{1,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DEVICES = re.compile(r"[0-9A-Za-z,-]{1,256}")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_MODELS_DIR = re.compile(re.escape(facts.STATE_DIR) + r"(/[A-Za-z0-9_][A-Za-z0-9._-]*)+/?")


def keep_alive_seconds(text: str) -> float | None:
    """A Go duration (or bare seconds) in seconds; None when it is not one."""
    if len(text) > 32 or not _DURATION.fullmatch(text):
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("-")
    if body.isdigit():
        return sign * int(body)
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body))


def _get(p: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        p = getattr(p, part)
    return p


def check_profile(p: Profile, path: Path) -> None:
    def bad(field_name: str, message: str) -> ProfileError:
        return ProfileError(f"{shown(path)}: {field_name}: {message}")

    def need(pattern: re.Pattern[str], value: str, field_name: str, what: str) -> None:
        if not pattern.fullmatch(value):
            raise bad(field_name, f"{value!r} {what}")

    need(_NAME, p.name, "name", "(the profile's file name) must be lower-case letters, digits and '-'")
    need(_NAME, p.image.name, "image.name", "must be lower-case letters, digits and '-'")
    need(_NAME, p.image.hostname, "image.hostname", "is not a valid host name")
    need(VERSION, p.image.version, "image.version", "is not a version")
    need(_VOLUME, p.image.volume, "image.volume", "must be 1-32 letters, digits, '_', '-' or spaces")
    for dotted, (low, high) in INT_RANGES.items():
        value = _get(p, dotted)
        if value is not None and not low <= value <= high:
            raise bad(dotted, f"{value} is not in {low}-{high}")
    _check_image_and_debian(p, bad)
    _check_gpu(p, bad)
    _check_ollama(p, bad)
    check_llama_server(p.llama_server, bad)
    _check_ports(p, bad)
    for pkg in p.packages:
        need(_PKG, pkg, "packages", "is not a Debian package name")
    for model in p.preload.models:
        need(_MODEL, model, "preload.models", "is not an Ollama model name (name[:tag])")
    for model in p.idle.pinned:
        need(_MODEL, model, "idle.pinned", "is not an Ollama model name (name[:tag])")
    _check_files(p, bad)


def _check_image_and_debian(p: Profile, bad: Any) -> None:
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
        if not _URL.fullmatch(url):
            raise bad(f"debian.mirrors.{key}", f"{url!r} is not an http(s):// or file:// URL")
    for area in p.debian.areas:
        if area not in ARCHIVE_AREAS:
            raise bad("debian.areas", f"{area!r} is not one of {', '.join(ARCHIVE_AREAS)}")
    if "main" not in p.debian.areas:
        raise bad("debian.areas", "must include main")


def _check_gpu(p: Profile, bad: Any) -> None:
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


def _check_ollama(p: Profile, bad: Any) -> None:
    o = p.ollama
    if o.archive is not None:
        if not _SHA256.fullmatch(o.archive.sha256):
            raise bad("ollama.archive.sha256", f"{o.archive.sha256!r} is not a sha256 (64 hex digits)")
        if not _URL.fullmatch(o.archive.url):
            raise bad("ollama.archive.url", f"{o.archive.url!r} is not a URL")
        if not VERSION.fullmatch(o.archive.version):
            raise bad("ollama.archive.version", f"{o.archive.version!r} is not a version")
    seconds = keep_alive_seconds(o.keep_alive)
    if seconds is None:
        raise bad("ollama.keep_alive", f"{o.keep_alive!r} is not a duration (5m, 1h, 300, -1)")
    if seconds > MAX_KEEP_ALIVE_S:
        raise bad("ollama.keep_alive", f"{o.keep_alive!r} is longer than 8760h (a year; -1 keeps models loaded)")
    if o.kv_cache_type is not None and o.kv_cache_type not in KV_CACHE_TYPES:
        raise bad("ollama.kv_cache_type", f"{o.kv_cache_type!r} is not one of {', '.join(KV_CACHE_TYPES)}")
    if o.cuda_visible_devices is not None and not _DEVICES.fullmatch(o.cuda_visible_devices):
        raise bad("ollama.cuda_visible_devices", f"{o.cuda_visible_devices!r} is not a device list")
    if len(o.extra_env) > MAX_EXTRA_ENV:
        raise bad("ollama.extra_env", f"more than {MAX_EXTRA_ENV} variables")
    for key in o.extra_env:
        if not _ENV_NAME.fullmatch(key):
            raise bad(f"ollama.extra_env.{key}", "not an environment variable name")
        if key == "OLLAMA_HOST":
            raise bad(f"ollama.extra_env.{key}", "the engine listens on loopback only; use gateway.port")
    if len(o.instances) > MAX_INSTANCES:
        raise bad("ollama.instances", f"more than {MAX_INSTANCES} instances")
    names: set[str] = set()
    for i, inst in enumerate(o.instances):
        where = f"ollama.instances[{i}]"
        if not _NAME.fullmatch(inst.name):
            raise bad(f"{where}.name", f"{inst.name!r} must be lower-case letters, digits and '-'")
        if inst.name in names:
            raise bad(f"{where}.name", f"{inst.name!r} is used twice")
        names.add(inst.name)
        if inst.gpus and not _DEVICES.fullmatch(inst.gpus):
            raise bad(f"{where}.gpus", f"{inst.gpus!r} is not a device list")
        for key in ("numa_node", "num_parallel", "context_length"):
            value, (low, high) = getattr(inst, key), INT_RANGES[f"ollama.{key}"]
            if value is not None and not low <= value <= high:
                raise bad(f"{where}.{key}", f"{value} is not in {low}-{high}")
        for model in inst.pinned:
            if not _MODEL.fullmatch(model):
                raise bad(f"{where}.pinned", f"{model!r} is not an Ollama model name (name[:tag])")
        if inst.membind and inst.numa_node is None:
            raise bad(f"{where}.membind", "needs numa_node")
        if inst.keep_alive is not None:
            seconds = keep_alive_seconds(inst.keep_alive)
            if seconds is None or seconds > MAX_KEEP_ALIVE_S:
                raise bad(f"{where}.keep_alive", f"{inst.keep_alive!r} is not a duration up to 8760h (5m, 1h, -1)")
        if inst.models_dir and (not _MODELS_DIR.fullmatch(inst.models_dir)
                                or ".." in inst.models_dir.split("/")):
            raise bad(f"{where}.models_dir", f"{inst.models_dir!r} must be a plain path under {facts.STATE_DIR}/ "
                      "(the persistent state; letters, digits, '.', '_', '-')")


def _check_ports(p: Profile, bad: Any) -> None:
    taken = {ENGINE_PORT: f"the engine ({ENGINE_PORT})", facts.LLAMA_PORT: f"llama-server ({facts.LLAMA_PORT})"}
    if p.ssh.enabled:
        taken[facts.SSH_PORT] = f"SSH ({facts.SSH_PORT})"
    if p.gateway.port in taken:
        raise bad("gateway.port", f"{p.gateway.port} is already used by {taken[p.gateway.port]}")
    taken[p.gateway.port] = "gateway.port"
    for i, inst in enumerate(p.ollama.instances):
        where = f"ollama.instances[{i}].port"
        if not 1024 <= inst.port <= 65535:
            raise bad(where, f"{inst.port} is not in 1024-65535")
        if inst.port in taken:
            raise bad(where, f"{inst.port} is already used by {taken[inst.port]}")
        taken[inst.port] = where


def _check_files(p: Profile, bad: Any) -> None:
    if p.ssh.authorized_keys is not None:
        keys = authorized_keys_path(p)
        if keys is None or not keys.is_file():
            raise bad("ssh.authorized_keys", f"{p.ssh.authorized_keys!r}: no such file")
        if not p.ssh.enabled:
            raise bad("ssh.authorized_keys", "given but ssh.enabled is false")
        try:
            read_authorized_keys(keys)
        except ProfileError as exc:
            raise bad("ssh.authorized_keys", str(exc)) from None
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
