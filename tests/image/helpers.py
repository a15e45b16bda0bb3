"""What the image tests share: an HTTPS client for the gateway, run state, pushing models."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Gateway:
    """HTTPS client for the forwarded gateway port, trusting only the device's own CA."""

    def __init__(self, port: int, ca_pem: str) -> None:
        self.base = f"https://127.0.0.1:{port}"
        self.context = ssl.create_default_context(cadata=ca_pem)
        self.context.check_hostname = False  # reached via 127.0.0.1 forward; SANs are checked separately

    def request(self, method: str, path: str, key: str | None = None, body: Any = None,
                headers: dict[str, str] | None = None) -> Response:
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as resp:
                return Response(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read(), dict(err.headers))


# "Keep it small": the operator page's own files (HTML, CSS, JS), as the browser loads them.
PAGE_BUDGET = 64 * 1024
# In the browser: those bytes (the navigation plus every script and style, not the API calls it makes).
PAGE_BYTES_JS = ("const nav = performance.getEntriesByType('navigation')[0];"
                 "const files = performance.getEntriesByType('resource').filter((e) => e.initiatorType !== 'fetch');"
                 "return nav.decodedBodySize + files.reduce((n, e) => n + e.decodedBodySize, 0);")


def save_state(values: dict[str, Any]) -> None:
    path = Path(os.environ["NEURALDRIVE_STATE"])
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(values)
    path.write_text(json.dumps(current, indent=2))


def record_figure(name: str, value: str) -> None:
    """A measured figure ("0.71 s"): printed now, and by `build.py test` in its summary and
    test-summary.json. Figures are recorded, never asserted on time."""
    print(f"\nfigure: {name}: {value}")
    path = Path(os.environ["NEURALDRIVE_STATE"])
    figures = (json.loads(path.read_text()) if path.exists() else {}).get("figures", {})
    save_state({"figures": {**figures, name: value}})


def push_models(models_dir: Path) -> None:
    """Copy an Ollama models dir (manifests/ + blobs/) into the guest's model store over SSH."""
    tar = subprocess.run(["tar", "-C", str(models_dir), "-cf", "-", "manifests", "blobs"],
                         capture_output=True, check=True).stdout
    guest("sudo tar -xf - -C /var/lib/neuraldrive/models --no-same-owner && "
          "sudo chown -R neuraldrive-ollama:neuraldrive-ollama /var/lib/neuraldrive/models", data=tar)


def guest(command: str, data: bytes | None = None, timeout: float = 120) -> str:
    """Run a shell command on the guest as the admin (over the harness's SSH); its stdout."""
    result = subprocess.run(["ssh", "-F", os.environ["NEURALDRIVE_SSH_CONFIG"], "neuraldrive-vm", command],
                            input=data, capture_output=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{command}: exit {result.returncode}: {result.stderr.decode(errors='replace')}"
    return result.stdout.decode(errors="replace")


def create_model(gguf: Path, name: str) -> None:
    """Import a GGUF file as model `name` with the engine's own CLI on the guest (`ollama create` from a
    Modelfile: the CLI uploads the blob to the engine, which writes manifest and blobs itself)."""
    guest("mkdir -p /tmp/nd-model && cat > /tmp/nd-model/model.gguf", data=gguf.read_bytes())
    guest("cd /tmp/nd-model && printf 'FROM ./model.gguf\\n' > Modelfile && "
          f"ollama create {name} -f Modelfile && rm -rf /tmp/nd-model", timeout=300)


def wait_until_engine_answers(host: Any, timeout: float = 30) -> None:
    """After a restart: the unit is active before the engine listens; later tests need it answering."""
    deadline = time.monotonic() + timeout
    while host.run("curl -sf http://127.0.0.1:11434/api/version").rc != 0:
        assert time.monotonic() < deadline, "engine restarted but does not answer"
        time.sleep(1)
