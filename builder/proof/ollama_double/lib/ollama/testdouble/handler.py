"""The API handlers' common ground (server/routes.go, v0.32.7): the server's context (store,
scheduler, settings), the request-scoped helpers every route uses (the model a request names, its
load through the scheduler) and the compact JSON Ollama writes.
"""

from __future__ import annotations

import http.server
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import goenv
from .http_base import BaseHandler, error
from .sched import SchedError, Scheduler, model_blob
from .store import ModelInfo, ModelStore


@dataclass
class Context:
    store: ModelStore
    sched: Scheduler
    keep_alive_ns: int
    context_length: int
    registry: Path | None  # OLLAMA_TESTDOUBLE_REGISTRY: a models dir that pull copies from
    # OLLAMA_TESTDOUBLE_CPU_FALLBACK=1: /api/ps shows size_vram 0, as Ollama does for a model it
    # placed on the CPU (e.g. the GPU driver did not answer when it loaded)
    cpu_fallback: bool = False
    # OLLAMA_TESTDOUBLE_STREAM_DELAY_MS: wall-clock pause before each streamed token (default 0), so a
    # fault test can kill the engine while a reply is still streaming. Not an Ollama setting.
    stream_delay_s: float = 0.0


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    ctx: Context


def now() -> str:
    return goenv.rfc3339(time.time_ns())


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class ApiHandler(BaseHandler):
    server: Server

    @property
    def ctx(self) -> Context:
        return self.server.ctx

    def before(self) -> None:
        self.ctx.sched.purge()

    def _model(self, body: dict[str, Any]) -> tuple[str, int | None, ModelInfo]:
        try:
            keep_alive = goenv.keep_alive_from_json(body.get("keep_alive"))
        except goenv.DurationError as exc:
            raise error(400, str(exc)) from exc
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise error(400, "model is required")
        info = self.ctx.store.find(name)
        if info is None:
            raise error(404, f"model '{name}' not found")
        return name, keep_alive, info

    def _load(self, info: ModelInfo, keep_alive: int | None) -> None:
        try:
            self.ctx.sched.load(info, keep_alive, model_blob(info, self.ctx.store.blobs))
        except SchedError as exc:
            raise error(exc.status, str(exc)) from exc
