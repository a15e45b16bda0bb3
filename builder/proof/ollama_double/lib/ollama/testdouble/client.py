"""The CLI's side of the API (api/client.go ClientFromEnvironment, v0.32.7): requests to
envconfig.ConnectableHost() without proxies, server errors as ClientError with the server's message,
NDJSON streams, blob uploads (cmd/cmd.go createBlob)."""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import envconfig

CONNECT_ERROR = "could not connect to ollama server, run 'ollama serve' to start it"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClientError(Exception):
    pass


def base_url() -> str:
    url = envconfig.connectable_host()
    return f"{url.scheme}://{url.hostport}"


def request(method: str, path: str, body: Any = None, data: bytes | None = None) -> Any:
    if body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(base_url() + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/x-ndjson"})
    try:
        return _OPENER.open(req, timeout=600)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        err = ClientError(str(message))
        err.status = exc.code  # type: ignore[attr-defined]
        raise err from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(CONNECT_ERROR) from exc


def api(method: str, path: str, body: Any = None) -> Any:
    with request(method, path, body) as resp:
        return json.loads(resp.read() or b"null")


def stream(path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with request("POST", path, body) as resp:
        for line in resp:
            if line.strip():
                event = json.loads(line)
                if "error" in event:
                    raise ClientError(str(event["error"]))
                yield event


def print_statuses(events: Iterator[dict[str, Any]]) -> None:
    """Each new status of a progress stream as one plain line on stderr (no progress bars)."""
    status = ""
    for event in events:
        if event.get("status") != status:
            status = event.get("status", "")
            print(status, file=sys.stderr, flush=True)


def upload(path: Path) -> str:
    """CreateBlob: sha256 of the file, HEAD /api/blobs/<digest>, POST it if missing."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    digest = "sha256:" + sha.hexdigest()
    try:
        with request("HEAD", f"/api/blobs/{digest}"):
            return digest
    except ClientError as exc:
        if getattr(exc, "status", 0) != 404:
            raise
    print(f"copying file {digest} 100%", file=sys.stderr, flush=True)
    with request("POST", f"/api/blobs/{digest}", data=path.read_bytes()):
        return digest
