"""gateway-auth: who may reach the engine, decided in constant time; and the real gateway (Caddy with
the rendered Caddyfile) asking the real program over its Unix socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import facts
from builder.profile import load_profile
from tests.fixtures.gateway import (  # noqa: F401 (fixtures)
    ADMIN,
    API,
    auth_socket_fixture,
    caddy_gateway,
    echo_engine,
    keys_fixture,
    request,
)
from tests.fixtures.gpu import lib

auth = lib("gateway_auth")


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
def gateway(tmp_path: Path, auth_socket: Path) -> Iterator[str]:
    """The test profile's gateway in front of an echo engine."""
    with echo_engine() as engine, caddy_gateway(tmp_path, load_profile("test"), auth_socket, {
            f"127.0.0.1:{facts.OLLAMA_PORT}": f"127.0.0.1:{engine.server_address[1]}"}) as base:
        yield base


def test_the_gateway_asks_gateway_auth(gateway: str) -> None:
    status, body = request(gateway, "GET", "/api/tags", f"bearer {API}")
    assert status == 200
    echoed = json.loads(body)
    assert echoed["path"] == "/api/tags" and echoed["authorization"] is None  # the key never reaches the engine
    assert request(gateway, "GET", "/api/tags", None)[0] == 401
    assert request(gateway, "GET", "/v1/models", f"Bearer {API}x")[0] == 401
    status, body = request(gateway, "DELETE", "/api/delete", f"Bearer {API}")
    assert status == 403 and "admin key" in json.loads(body)["error"]
    assert request(gateway, "DELETE", "/api/delete", f"Bearer {ADMIN}")[0] == 200


def test_a_rotated_key_counts_at_once(gateway: str, keys: tuple[Path, Path]) -> None:
    assert request(gateway, "GET", "/api/tags", f"Bearer {API}")[0] == 200
    keys[0].write_text("nd-" + "c" * 43 + "\n")
    assert request(gateway, "GET", "/api/tags", f"Bearer {API}")[0] == 401
    assert request(gateway, "GET", "/api/tags", "Bearer nd-" + "c" * 43)[0] == 200


def test_instances_are_routed_under_their_prefix_with_the_same_key(tmp_path: Path, auth_socket: Path) -> None:
    """The rendered Caddyfile of a profile with two instances, run by the real Caddy: /i/NAME/api|v1/...
    reaches that instance's port without the prefix and without the key; the admin routes still
    need the admin key; an unknown instance reaches no engine."""
    profile = tmp_path / "two.yaml"
    profile.write_text("extends: cpu\nollama:\n  instances:\n    - {name: gpu0, port: 11500}\n"
                       "    - {name: gpu1, port: 11501}\n")
    with echo_engine() as main, echo_engine() as gpu0, echo_engine() as gpu1:
        engines = {"main": main, "gpu0": gpu0, "gpu1": gpu1}
        moves = {f"127.0.0.1:{listen}": f"127.0.0.1:{engines[name].server_address[1]}"
                 for name, listen in (("main", 11434), ("gpu0", 11500), ("gpu1", 11501))}
        with caddy_gateway(tmp_path, load_profile(str(profile)), auth_socket, moves) as base:
            for name in ("gpu0", "gpu1"):
                status, body = request(base, "GET", f"/i/{name}/api/tags", f"Bearer {API}")
                assert status == 200 and json.loads(body) == {"path": "/api/tags", "authorization": None,
                                                              "port": engines[name].server_address[1]}
                status, body = request(base, "POST", f"/i/{name}/v1/chat/completions", f"Bearer {API}")
                assert status == 200 and json.loads(body)["path"] == "/v1/chat/completions"
                assert request(base, "GET", f"/i/{name}/api/tags", None)[0] == 401
                status, body = request(base, "DELETE", f"/i/{name}/api/delete", f"Bearer {API}")
                assert status == 403 and "admin key" in json.loads(body)["error"]
                assert request(base, "DELETE", f"/i/{name}/api/delete", f"Bearer {ADMIN}")[0] == 200
            status, body = request(base, "GET", "/i/nope/api/tags", f"Bearer {API}")
            assert b"/api/tags" not in body  # no engine behind an unknown instance
            status, body = request(base, "GET", "/api/tags", f"Bearer {API}")
            assert status == 200 and json.loads(body)["port"] == main.server_address[1]
