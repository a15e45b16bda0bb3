"""The profile schema: frozen dataclasses, one per section of a profile YAML file (see load.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from builder.profile.checks import GPU_VENDORS  # also: the other vocabularies, file paths


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
    gpus: str = ""  # CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES and GGML_VK_VISIBLE_DEVICES
    models_dir: str = ""
    numa_node: int | None = None  # numactl --cpunodebind (and --membind with membind: true)
    membind: bool = False
    # Own tuning; None: the engine's (ollama.*)
    num_parallel: int | None = None
    keep_alive: str | None = None
    context_length: int | None = None
    pinned: tuple[str, ...] = ()  # as idle.pinned, for this instance


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
class LlamaServer:
    """llama.cpp's server (lib/ollama/llama-server of the engine archive) serving one GGUF model.

    One process, one model: see docs/appliance.md (llama.cpp engine) for why not router mode.
    None: llama-server's own default.
    """

    enabled: bool = False
    # An Ollama model name (name[:tag], its GGUF weights blob) or a .gguf path under the model store.
    model: str = ""
    n_gpu_layers: int | None = None  # -ngl
    ctx_size: int | None = None  # -c
    batch_size: int | None = None  # -b
    threads: int | None = None  # -t
    flash_attn: str = "auto"  # -fa on|off|auto
    parallel: int | None = None  # -np
    embeddings: bool = False  # --embeddings: /v1/embeddings answers only with it


@dataclass(frozen=True)
class IdleManager:
    enabled: bool = True
    idle_timeout: int = 300
    monitoring_interval: int = 30
    # Models kept loaded (keep_alive -1) and loaded again after an engine restart (name[:tag]).
    pinned: tuple[str, ...] = ()


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
class Console:
    # The menu on tty1 and the serial console instead of a login prompt (physical presence is the
    # credential: docs/appliance.md); false keeps the login prompt (every password is locked).
    menu: bool = True


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
    llama_server: LlamaServer = field(default_factory=LlamaServer)
    idle: IdleManager = field(default_factory=IdleManager)
    healthcheck: HealthCheck = field(default_factory=HealthCheck)
    gateway: Gateway = field(default_factory=Gateway)
    ssh: Ssh = field(default_factory=Ssh)
    console: Console = field(default_factory=Console)
    preload: Preload = field(default_factory=Preload)
    packages: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
