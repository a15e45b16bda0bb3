"""llama-server's start-up as server.cpp `llama_server` runs it in single-model mode: parse the
arguments, listen (every route answers 503 "Loading model" meanwhile), load the model (a GGUF file:
anything else is refused as gguf.cpp does and the process exits 1), then serve until SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from testdouble.gguf import NotGGUFError, read_gguf

from llamadouble.args import ArgError, Options, parse
from llamadouble.routes import FINGERPRINT, Handler, Model, Server


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load(opts: Options) -> Model:
    """llama_model_load: gguf_init_from_file's checks (open, magic, version), then the KVs."""
    try:
        with open(opts.model, "rb") as handle:
            head = handle.read(8)
    except OSError:
        log(f"gguf_init_from_file: failed to open GGUF file '{opts.model}'")
        raise
    if head[:4] != b"GGUF":
        log(f"gguf_init_from_file_impl: invalid magic characters: '{head[:4].decode('latin-1')}', expected 'GGUF'")
        raise NotGGUFError()
    if int.from_bytes(head[4:8], "little") not in (2, 3):
        log(f"gguf_init_from_file_impl: this GGUF file is version {int.from_bytes(head[4:8], 'little')} "
            "but this software only supports versions 2 and 3")
        raise NotGGUFError()
    kv, params = read_gguf(opts.model)  # a truncated header raises NotGGUFError too
    alias = opts.alias.split(",")[0].strip() or os.path.basename(opts.model)
    return Model(alias, opts.model, kv, params, os.path.getsize(opts.model), opts.ctx_size, opts.embeddings)


def main(argv: list[str]) -> int:
    try:
        opts = parse(argv)
    except ArgError as exc:
        log(str(exc))
        return 1
    if opts.list_devices:
        print("Available devices:", flush=True)
        return 0
    log(f"build: {FINGERPRINT} (NeuralDrive test double, not llama.cpp) pid={os.getpid()} args={' '.join(argv)}")
    try:
        server = Server((opts.host, opts.port), Handler)
    except OSError:
        log(f"couldn't bind HTTP server socket, hostname: {opts.host}, port: {opts.port}")
        log("srv    load_model: failed to initialize HTTP server")
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log(f"main: HTTP server is listening, hostname: {opts.host}, port: {opts.port}, http threads: 4")
    log("main: loading model")
    time.sleep(float(os.environ.get("OLLAMA_TESTDOUBLE_LOAD_DELAY", "0") or 0))
    try:
        model = load(opts)
    except (OSError, NotGGUFError):
        log(f"llama_model_load: error loading model: llama_model_loader: failed to load model from {opts.model}")
        log("main: exiting due to model loading error")
        server.shutdown()
        return 1
    server.model = model
    log("main: model loaded")
    log(f"main: server is listening on http://{opts.host}:{opts.port} - starting the main loop")
    log(f"srv  update_slots: all slots are idle (model {model.alias}, n_ctx {model.n_ctx}, flash_attn "
        f"{opts.flash_attn}, embeddings {'on' if opts.embeddings else 'off'})")
    while not stop.wait(0.5):
        pass
    log("srv    operator(): cleaning up before exit...")
    server.shutdown()
    return 0
