"""gateway-auth: who may reach the engine, decided in constant time; and the real gateway (Caddy with
the rendered Caddyfile) asking the real program over its Unix socket."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.profile import load_profile
from tests.fixtures.gpu import CHROOT, clean_env, lib, program
from tests.unit.test_inimage_units import render

auth = lib("gateway_auth")
API, ADMIN = "nd-" + "a" * 43, "nd-" + "b" * 43
CADDY = "/usr/local/lib/neuraldrive-tools/caddy" if os.access(
    "/usr/local/lib/neuraldrive-tools/caddy", os.X_OK) else shutil.which("caddy")


@pytest.mark.parametrize(("method", "uri", "header", "status"), [
    ("GET", "/api/tags", None, 401),
    ("GET", "/api/tags", "", 401),
    ("GET", "/api/tags", "Bearer ", 401),
    ("GET", "/api/tags", f"Basic {API}", 401),
    ("GET", "/api/tags", f"Bearer {API}x", 401),
    ("GET", "/api/tags", f"Bearer {API[:-1]}", 401),
    ("GET", "/api/tags", f"Bearer {API}", 200),
    ("GET", "/api/tags", f"bearer {API}", 200),  # the scheme is case-insensitive (RFC 9110)
    ("GET", "/v1/models", f"BEARER  {API} ", 200),
    ("GET", "/api/tags", f"Bearer {ADMIN}", 200),  # the admin key does everything the API key does
    ("POST", "/api/pull", f"Bearer {API}", 200),
    ("POST", "/api/create", f"Bearer {API}", 403),
    ("POST", "/api/copy", f"Bearer {API}", 403),
    ("DELETE", "/api/delete", f"Bearer {API}", 403),
    ("POST", "/api/push", f"Bearer {API}", 403),
    ("POST", "/api/blobs/sha256:00", f"Bearer {API}", 403),
    ("POST", "/i/gpu1/api/create", f"Bearer {API}", 403),
    ("POST", "/api/create?x=1", f"Bearer {ADMIN}", 200),
    ("DELETE", "/api/delete", f"Bearer {ADMIN}", 200),
])
def test_decide(method: str, uri: str, header: str | None, status: int) -> None:
    assert auth.decide(method, uri, header, API, ADMIN).status == status


def test_an_empty_key_file_lets_nobody_in() -> None:
    assert auth.decide("GET", "/api/tags", "Bearer x", None, None).status == 401
    assert auth.decide("GET", "/api/tags", "Bearer ", "", "").status == 401


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or a == b)
    auth.decide("GET", "/api/tags", f"Bearer {API}", API, ADMIN)
    assert (API.encode(), API.encode()) in calls and (API.encode(), ADMIN.encode()) in calls


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    api, admin = tmp_path / "api-key", tmp_path / "admin-key"
    api.write_text(API + "\n")
    admin.write_text(ADMIN + "\n")
    return api, admin


@pytest.fixture()
def auth_socket(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[Path]:
    sock = tmp_path / "auth.sock"
    proc = subprocess.Popen([*program("usr/lib/neuraldrive/gateway-auth"), "--socket", str(sock),
                             "--api-key-file", str(keys[0]), "--admin-key-file", str(keys[1])], env=clean_env())
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "gateway-auth did not start"
        time.sleep(0.05)
    yield sock
    proc.terminate()
    proc.wait(timeout=10)


class _Engine(http.server.BaseHTTPRequestHandler):
    def _reply(self) -> None:
        body = json.dumps({"path": self.path, "authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply()

    def do_POST(self) -> None:
        self._reply()

    def do_DELETE(self) -> None:
        self._reply()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def gateway(tmp_path: Path, auth_socket: Path) -> Iterator[str]:
    """The rendered Caddyfile, run by the real Caddy with paths and ports moved into tmp_path."""
    if CADDY is None:
        pytest.skip("caddy not installed (scripts/setup-host installs it)")
    engine = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=localhost", "-days", "1", "-keyout", str(tmp_path / "server.key"),
                    "-out", str(tmp_path / "server.crt")], check=True, capture_output=True)
    port = _free_port()
    text = render(CHROOT / "etc/neuraldrive/Caddyfile.j2", load_profile("test"))
    text = (text.replace("/var/lib/neuraldrive/tls", str(tmp_path)).replace("/run/neuraldrive-auth/auth.sock",
                                                                            str(auth_socket))
            .replace("127.0.0.1:11434", f"127.0.0.1:{engine.server_address[1]}")
            .replace("https://:8443 {", f"https://:{port} {{\n\tbind 127.0.0.1"))
    (tmp_path / "Caddyfile").write_text(text)
    env = clean_env(XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_DATA_HOME=str(tmp_path / "data"))
    caddy = subprocess.Popen([CADDY, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while _request(base, "GET", "/health", None)[0] != 200:
        assert caddy.poll() is None and time.monotonic() < deadline, "caddy did not start"
        time.sleep(0.1)
    yield base
    caddy.terminate()
    caddy.wait(timeout=10)
    engine.shutdown()


def _request(base: str, method: str, path: str, authorization: str | None) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": authorization} if authorization is not None else {}
    request = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def test_the_gateway_asks_gateway_auth(gateway: str) -> None:
    status, body = _request(gateway, "GET", "/api/tags", f"bearer {API}")
    assert status == 200
    assert json.loads(body) == {"path": "/api/tags", "authorization": None}  # the key never reaches the engine
    assert _request(gateway, "GET", "/api/tags", None)[0] == 401
    assert _request(gateway, "GET", "/v1/models", f"Bearer {API}x")[0] == 401
    status, body = _request(gateway, "DELETE", "/api/delete", f"Bearer {API}")
    assert status == 403 and "admin key" in json.loads(body)["error"]
    assert _request(gateway, "DELETE", "/api/delete", f"Bearer {ADMIN}")[0] == 200


def test_a_rotated_key_counts_at_once(gateway: str, keys: tuple[Path, Path]) -> None:
    assert _request(gateway, "GET", "/api/tags", f"Bearer {API}")[0] == 200
    keys[0].write_text("nd-" + "c" * 43 + "\n")
    assert _request(gateway, "GET", "/api/tags", f"Bearer {API}")[0] == 401
    assert _request(gateway, "GET", "/api/tags", "Bearer nd-" + "c" * 43)[0] == 200


class _TaggedEngine(_Engine):
    """Also says which engine (its port) answered."""

    def _reply(self) -> None:
        body = json.dumps({"path": self.path, "authorization": self.headers.get("Authorization"),
                           "port": self.connection.getsockname()[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_instances_are_routed_under_their_prefix_with_the_same_key(tmp_path: Path, auth_socket: Path) -> None:
    """The rendered Caddyfile of a profile with two instances, run by the real Caddy: /i/NAME/api|v1/...
    reaches that instance's port without the prefix and without the key; the admin routes still
    need the admin key; an unknown instance reaches no engine."""
    if CADDY is None:
        pytest.skip("caddy not installed (scripts/setup-host installs it)")
    engines = {}
    for name in ("main", "gpu0", "gpu1"):
        engines[name] = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TaggedEngine)
        threading.Thread(target=engines[name].serve_forever, daemon=True).start()
    profile = tmp_path / "two.yaml"
    profile.write_text("extends: cpu\nollama:\n  instances:\n    - {name: gpu0, port: 11500}\n"
                       "    - {name: gpu1, port: 11501}\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=localhost", "-days", "1", "-keyout", str(tmp_path / "server.key"),
                    "-out", str(tmp_path / "server.crt")], check=True, capture_output=True)
    port = _free_port()
    text = render(CHROOT / "etc/neuraldrive/Caddyfile.j2", load_profile(str(profile)))
    for engine, listen in ((engines["main"], "11434"), (engines["gpu0"], "11500"), (engines["gpu1"], "11501")):
        text = text.replace(f"127.0.0.1:{listen}", f"127.0.0.1:{engine.server_address[1]}")
    text = (text.replace("/var/lib/neuraldrive/tls", str(tmp_path)).replace("/run/neuraldrive-auth/auth.sock",
                                                                            str(auth_socket))
            .replace("https://:8443 {", f"https://:{port} {{\n\tbind 127.0.0.1"))
    (tmp_path / "Caddyfile").write_text(text)
    env = clean_env(XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_DATA_HOME=str(tmp_path / "data"))
    caddy = subprocess.Popen([CADDY, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while _request(base, "GET", "/health", None)[0] != 200:
            assert caddy.poll() is None and time.monotonic() < deadline, "caddy did not start"
            time.sleep(0.1)
        for name in ("gpu0", "gpu1"):
            status, body = _request(base, "GET", f"/i/{name}/api/tags", f"Bearer {API}")
            assert status == 200 and json.loads(body) == {"path": "/api/tags", "authorization": None,
                                                          "port": engines[name].server_address[1]}
            status, body = _request(base, "POST", f"/i/{name}/v1/chat/completions", f"Bearer {API}")
            assert status == 200 and json.loads(body)["path"] == "/v1/chat/completions"
            assert _request(base, "GET", f"/i/{name}/api/tags", None)[0] == 401
            status, body = _request(base, "DELETE", f"/i/{name}/api/delete", f"Bearer {API}")
            assert status == 403 and "admin key" in json.loads(body)["error"]
            assert _request(base, "DELETE", f"/i/{name}/api/delete", f"Bearer {ADMIN}")[0] == 200
        status, body = _request(base, "GET", "/i/nope/api/tags", f"Bearer {API}")
        assert b"/api/tags" not in body  # no engine behind an unknown instance
        status, body = _request(base, "GET", "/api/tags", f"Bearer {API}")
        assert status == 200 and json.loads(body)["port"] == engines["main"].server_address[1]
    finally:
        caddy.terminate()
        caddy.wait(timeout=10)
        for engine in engines.values():
            engine.shutdown()
