"""llama-server: start llama.cpp's server (lib/ollama/llama-server of the engine archive) on the
configured model.

The model is an Ollama name (its GGUF weights are the blob that the manifest's
`application/vnd.ollama.image.model` layer names) or a .gguf path under the model store. Until it
is in the store (a model is pulled after boot) the launcher says so once in the journal and looks
again every few seconds, then execs llama-server in its own place (same PID, so systemd watches the
server itself). Waiting is not a failure: no restart loop, and a pull is all it takes. A setting it
cannot use is one line and exit 2, which the unit does not restart (RestartPreventExitStatus=2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from .common import ConfigError, Runner, Settings, fail, load_conf_files, log

PROG = "llama-server"
UNIT = "neuraldrive-llama-server.service"
# builder/facts.py LLAMA_*, which the image cannot import (tests/unit/test_llama_server.py checks them).
CONF_FILES = ("/etc/neuraldrive/llama-server.conf", "/var/lib/neuraldrive/config/llama-server.conf")
LLAMA_BIN = "/usr/local/lib/ollama/llama-server"
LLAMA_PORT = 11440
MODELS_DIR = "/var/lib/neuraldrive/models"
WAIT_S = 5.0
HEALTH_TIMEOUT_S = 3.0

# Ollama's store: manifests/<host>/<namespace>/<model>/<tag> (types/model ParseName defaults).
REGISTRY, NAMESPACE, TAG = "registry.ollama.ai", "library", "latest"
MODEL_LAYER = "application/vnd.ollama.image.model"
GGUF_MAGIC = b"GGUF"  # ggml/src/gguf.cpp: a file without it is refused ("invalid magic characters")
FLASH_ATTN = ("on", "off", "auto")  # common/arg.cpp: -fa takes a value
# GPU backend libraries of the archive per gpu-detect's backend (NEURALDRIVE_GPU_BACKEND in gpu.env),
# put on LD_LIBRARY_PATH after lib/ollama as Ollama does for its own llama-server children
# (llm/llama_server.go SetupLlamaServerCommandEnv: the executable's dir, then the GPU library dirs).
BACKEND_DIRS = {"cuda": ("cuda_v12", "cuda_v13"), "vulkan": ("vulkan",), "rocm": ("rocm",)}
_PART = r"[a-z0-9][a-z0-9._-]*"
_TAG = r"[A-Za-z0-9._-]+"
_NAME = re.compile(rf"(?:({_PART})/)??(?:({_PART})/)?({_PART})(?::({_TAG}))?")
_PATH = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9._+-]*)+\.gguf")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
# Integer options: setting, llama-server flag, smallest value (as builder/profile/llama_checks.py).
INT_OPTIONS = (("N_GPU_LAYERS", "--n-gpu-layers", 0), ("CTX_SIZE", "--ctx-size", 0),
               ("BATCH_SIZE", "--batch-size", 1), ("THREADS", "--threads", 1), ("PARALLEL", "--parallel", 1))


class ModelNotReadyError(Exception):
    """The model is not (or not yet, or not wholly) in the store: worth waiting for."""


def manifest_path(store: Path, name: str) -> Path:
    """Where Ollama keeps NAME's manifest; ConfigError for a name Ollama would not accept."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ConfigError(f"NEURALDRIVE_LLAMA_MODEL={name!r} is not an Ollama model name (name[:tag]) "
                          f"nor a .gguf path under {store}")
    parts = [p for p in match.groups()[:3] if p]
    host, namespace = (REGISTRY, NAMESPACE) if len(parts) == 1 else (
        (REGISTRY, parts[0]) if len(parts) == 2 else (parts[0], parts[1]))
    return store / "manifests" / host / namespace / parts[-1] / (match[4] or TAG)


def _weights_blob(store: Path, name: str) -> Path:
    manifest = manifest_path(store, name)
    try:
        layers = json.loads(manifest.read_bytes()[:1 << 20]).get("layers", [])
    except FileNotFoundError:
        raise ModelNotReadyError(f"model {name!r} is not in the store ({store}); pull it through the gateway "
                           f"(POST /api/pull) and llama-server starts within {WAIT_S:g} s") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelNotReadyError(f"model {name!r}: unreadable manifest {manifest} ({exc})") from None
    digests = [_DIGEST.fullmatch(str(layer.get("digest", ""))) for layer in layers
               if isinstance(layer, dict) and layer.get("mediaType") == MODEL_LAYER]
    if not digests or digests[0] is None:
        raise ModelNotReadyError(f"model {name!r} has no GGUF weights layer ({MODEL_LAYER}) in {manifest}")
    return store / "blobs" / f"sha256-{digests[0][1]}"


def resolve(store: Path, reference: str) -> Path:
    """The GGUF file REFERENCE names in STORE, checked to be one (its magic)."""
    if reference.startswith("/"):
        root = store.resolve()
        path = Path(reference)
        if not _PATH.fullmatch(reference) or ".." in path.parts or not path.resolve().is_relative_to(root):
            raise ConfigError(f"NEURALDRIVE_LLAMA_MODEL={reference!r} is not a .gguf path under {store}")
    else:
        path = _weights_blob(store, reference)
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError:
        raise ModelNotReadyError(f"model {reference!r}: {path} is not in the store yet") from None
    except OSError as exc:
        raise ModelNotReadyError(f"model {reference!r}: cannot read {path} ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise ModelNotReadyError(f"model {reference!r}: {path} is not a GGUF file (llama-server would refuse it)")
    return path


def server_argv(settings: Settings, model: Path, binary: str = LLAMA_BIN) -> list[str]:
    """llama-server's command line (flags from llama.cpp common/arg.cpp); loopback only."""
    reference = settings.text("NEURALDRIVE_LLAMA_MODEL")
    port = settings.integer("NEURALDRIVE_LLAMA_PORT", LLAMA_PORT, minimum=1)
    # --alias: the name /v1/models shows and clients send; --offline: never download anything;
    # --no-webui: the gateway serves only the API.
    argv = [binary, "--model", str(model), "--alias", reference.rsplit("/", 1)[-1] if reference.startswith("/")
            else reference, "--host", "127.0.0.1", "--port", str(port), "--offline", "--no-webui"]
    for key, flag, minimum in INT_OPTIONS:
        if settings.text(f"NEURALDRIVE_LLAMA_{key}"):
            argv += [flag, str(settings.integer(f"NEURALDRIVE_LLAMA_{key}", 0, minimum=minimum))]
    flash = settings.text("NEURALDRIVE_LLAMA_FLASH_ATTN", "auto")
    if flash not in FLASH_ATTN:
        raise ConfigError(f"NEURALDRIVE_LLAMA_FLASH_ATTN={flash!r} is not one of {', '.join(FLASH_ATTN)}")
    argv += ["--flash-attn", flash]
    if settings.text("NEURALDRIVE_LLAMA_EMBEDDINGS") in ("1", "true", "yes"):
        argv.append("--embeddings")
    return argv


def library_path(binary: str, backend: str) -> str:
    lib_dir = Path(binary).parent
    dirs = [lib_dir, *(lib_dir / d for d in BACKEND_DIRS.get(backend, ()) if (lib_dir / d).is_dir())]
    return os.pathsep.join(map(str, dirs))


def read_settings(conf_files: Sequence[str | Path] = CONF_FILES) -> Settings:
    return Settings(load_conf_files(conf_files, {}))


def launch(conf_files: Sequence[str | Path], store: Path, binary: str,
           execv: Callable[[str, list[str]], object], sleep: Callable[[float], None]) -> int:
    said = ""
    while True:
        # Read again each round: an override written while waiting counts at once.
        settings = read_settings(conf_files)
        reference = settings.text("NEURALDRIVE_LLAMA_MODEL")
        if not reference:
            raise ConfigError(f"NEURALDRIVE_LLAMA_MODEL is empty in {' and '.join(map(str, conf_files))}")
        try:
            model = resolve(store, reference)
        except ModelNotReadyError as exc:
            if str(exc) != said:
                log(f"{PROG}: waiting: {exc}", "warning")
                said = str(exc)
            sleep(WAIT_S)
            continue
        argv = server_argv(settings, model, binary)
        os.environ["LD_LIBRARY_PATH"] = library_path(binary, os.environ.get("NEURALDRIVE_GPU_BACKEND", "cpu"))
        log(f"{PROG}: serving {reference} from {model}: {' '.join(argv)} "
            f"(LD_LIBRARY_PATH={os.environ['LD_LIBRARY_PATH']})")
        execv(argv[0], argv)
        return 1  # pragma: no cover - execv does not return


def health(port: int = LLAMA_PORT, timeout: float = HEALTH_TIMEOUT_S) -> str:
    """llama-server's GET /health: 'ready' (200), 'loading the model' (503), or why it did not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as answer:
            return "ready" if answer.status == 200 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return "loading the model" if exc.code == 503 else f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"not answering ({getattr(exc, 'reason', exc)})"


def status_line(run: Runner, conf_files: Sequence[str | Path] = CONF_FILES, store: Path = Path(MODELS_DIR),
                probe: Callable[[int], str] = health) -> str | None:
    """`neuraldrive status`'s llama-server line; None when the profile does not run llama-server."""
    settings = read_settings(conf_files)
    if settings.text("NEURALDRIVE_LLAMA_ENABLED") != "1":
        return None
    reference = settings.text("NEURALDRIVE_LLAMA_MODEL") or "(no model set)"
    state = run(["systemctl", "is-active", UNIT]).stdout.strip() or "unknown"
    try:
        port = settings.integer("NEURALDRIVE_LLAMA_PORT", LLAMA_PORT, minimum=1)
        # The server first: an admin outside the engine's group cannot read the store itself.
        detail = probe(port) if state == "active" else f"unit {state}"
        if state == "active" and detail not in ("ready", "loading the model"):
            resolve(store, reference)  # not serving: why (most often, its model is not pulled yet)
    except (ModelNotReadyError, ConfigError) as exc:
        detail = f"waiting: {exc}" if state == "active" else f"unit {state}: {exc}"
    return f"{'llama.cpp':<10}{reference}  {detail}"


def health_finding(conf_files: Sequence[str | Path] = CONF_FILES,
                   probe: Callable[[int], str] = health) -> tuple[str, str] | None:
    """The health check's line (level, message): llama-server answering on loopback, or a warning.

    Report only: a crash is systemd's to restart, a missing model the operator's to pull. The check
    cannot read the model store, so it asks the server, not the store. None: not run by this image.
    """
    settings = read_settings(conf_files)
    if settings.text("NEURALDRIVE_LLAMA_ENABLED") != "1":
        return None
    model = settings.text("NEURALDRIVE_LLAMA_MODEL")
    try:
        state = probe(settings.integer("NEURALDRIVE_LLAMA_PORT", LLAMA_PORT, minimum=1))
    except ConfigError as exc:
        return "warning", f"llama-server: {exc}"
    if state in ("ready", "loading the model"):
        return "ok", f"llama-server: {state} ({model})"
    return "warning", (f"llama-server: {state}: waiting for model {model!r} or failed "
                       f"(neuraldrive llama; journalctl -u {UNIT})")


def main(argv: Sequence[str] | None = None, execv: Callable[[str, list[str]], object] = os.execv,
         sleep: Callable[[float], None] = time.sleep) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Start llama.cpp's server on the configured model (NEURALDRIVE_LLAMA_MODEL: an Ollama model "
        "name or a .gguf path under the model store), waiting until it is in the store."))
    parser.add_argument("--conf", action="append", metavar="FILE",
                        help=f"settings file, later ones win (default: {' '.join(CONF_FILES)})")
    parser.add_argument("--models", type=Path, default=Path(MODELS_DIR), metavar="DIR", help="the model store")
    parser.add_argument("--binary", default=LLAMA_BIN, help="llama.cpp's server program")
    args = parser.parse_args(argv)
    try:
        return launch(args.conf or CONF_FILES, args.models, args.binary, execv, sleep)
    except ConfigError as exc:
        return fail(PROG, str(exc), 2)
    except OSError as exc:
        return fail(PROG, f"cannot start {args.binary}: {exc.strerror or exc}")
