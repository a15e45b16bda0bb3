"""A small client for the engine's HTTP API (loopback only, so plain HTTP and no auth)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from .paths import OLLAMA_PORT

DEFAULT_HOST = f"127.0.0.1:{OLLAMA_PORT}"
# keep_alive must travel as a JSON number: Ollama parses a string as a Go duration, so
# "-1" is rejected ("missing unit in duration"). Seconds; negative = forever, 0 = now.
KEEP_FOREVER = -1
UNLOAD_NOW = 0
# Loading a large model from disk can take minutes (Ollama's own OLLAMA_LOAD_TIMEOUT is 5m).
LOAD_TIMEOUT_S = 600.0
# Ollama answers an unload before the runner is gone; this bounds the wait for it.
UNLOAD_WAIT_S = 30.0
# A pull's progress lines come at least every few seconds; a longer silence is a stalled download.
PULL_READ_TIMEOUT_S = 300.0


class EngineError(Exception):
    """The engine answered, but with an error (e.g. unknown model)."""


class EngineDownError(EngineError):
    """The engine did not answer at all (not running, hung, wrong address)."""


def base_url(host: str) -> str:
    """OLLAMA_HOST as the server reads it ('host:port', ':port', 'host', a URL) -> a URL to call.

    A wildcard bind address is reached through loopback.
    """
    raw = host.strip() or DEFAULT_HOST
    if "://" not in raw:
        raw = "http://" + raw
    parts = urllib.parse.urlsplit(raw)
    name = parts.hostname or ""
    if name in ("", "0.0.0.0", "::"):
        name = "127.0.0.1"
    if ":" in name:
        name = f"[{name}]"
    try:
        port = parts.port or OLLAMA_PORT
    except ValueError:
        port = OLLAMA_PORT
    return f"{parts.scheme}://{name}:{port}"


def canonical_name(name: str) -> str:
    """'llama3.2' and 'llama3.2:latest' are the same model to Ollama."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")


def matches(entry: dict[str, Any], name: str) -> bool:
    wanted = canonical_name(name)
    return any(canonical_name(str(entry.get(k) or "")) == wanted for k in ("name", "model"))


def keep_alive_body(model: str, seconds: int) -> dict[str, Any]:
    """The /api/generate body that loads (seconds < 0), or unloads (0), without a prompt."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError("keep_alive must be an integer number of seconds")
    return {"model": model, "keep_alive": seconds, "stream": False}


class Client:
    def __init__(self, host: str = DEFAULT_HOST, timeout: float = 10.0) -> None:
        self.url = base_url(host)
        self.timeout = timeout
        # The engine is on loopback: never send its traffic through an http_proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise EngineError(f"{method} {path}: HTTP {exc.code}: {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            raise EngineDownError(f"engine not answering at {self.url} ({reason})") from None
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise EngineError(f"{method} {path}: the answer is not JSON") from None

    def version(self, timeout: float | None = None) -> str:
        return str(self.call("GET", "/api/version", timeout=timeout).get("version", "?"))

    def ps(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", "/api/ps", timeout=timeout).get("models") or [])

    def tags(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", "/api/tags", timeout=timeout).get("models") or [])

    def load(self, model: str) -> None:
        self.call("POST", "/api/generate", keep_alive_body(model, KEEP_FOREVER),
                  timeout=LOAD_TIMEOUT_S)

    def request_unload(self, model: str) -> None:
        self.call("POST", "/api/generate", keep_alive_body(model, UNLOAD_NOW))

    def wait_gone(self, models: list[str], wait: float = UNLOAD_WAIT_S, poll: float = 0.2,
                  sleep: Callable[[float], object] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> list[str]:
        """Poll /api/ps until none of `models` is listed; returns those still there at the end."""
        deadline = clock() + wait
        while True:
            loaded = self.ps()
            left = [m for m in models if any(matches(e, m) for e in loaded)]
            if not left or clock() >= deadline:
                return left
            sleep(poll)

    def pull(self, model: str) -> Iterator[dict[str, Any]]:
        """The engine's progress lines while it pulls `model` (server/routes.go `PullHandler`
        streams api.ProgressResponse: status, digest, total, completed); an {"error": ...} line
        (server/routes.go `waitForStream`) raises EngineError."""
        data = json.dumps({"model": model, "stream": True}).encode()
        request = urllib.request.Request(self.url + "/api/pull", data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=PULL_READ_TIMEOUT_S) as response:
                for raw in response:
                    if not raw.strip():
                        continue
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        raise EngineError("POST /api/pull: a progress line is not JSON") from None
                    if isinstance(event, dict) and event.get("error"):
                        raise EngineError(f"pull {model}: {event['error']}")
                    if isinstance(event, dict):
                        yield event
        except urllib.error.HTTPError as exc:
            raise EngineError(f"POST /api/pull: HTTP {exc.code}: {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            raise EngineDownError(f"engine not answering at {self.url} ({reason})") from None

    def delete(self, model: str) -> None:
        """Remove a model from the store (server/routes.go `DeleteHandler`)."""
        self.call("DELETE", "/api/delete", {"model": model})

    def unload(self, model: str, wait: float = UNLOAD_WAIT_S) -> bool:
        """Ask the engine to drop `model` and wait until it has: True once gone."""
        self.request_unload(model)
        return not self.wait_gone([model], wait)


def _error_text(exc: urllib.error.HTTPError) -> str:
    """Ollama puts its reason in {"error": "..."}."""
    try:
        body = exc.read().decode("utf-8", "replace")
    except OSError:
        return str(exc.reason)
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message or body.strip() or exc.reason)
