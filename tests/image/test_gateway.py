"""The gateway: TLS with the device's own certificate, and nothing reaches the engine without the key."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pytest

from tests.image.helpers import Gateway


def test_health_needs_no_key(gateway: Gateway) -> None:
    response = gateway.request("GET", "/health")
    assert response.status == 200


def test_scheme_is_case_insensitive_and_admin_routes_need_the_admin_key(gateway: Gateway, api_key: str,
                                                                         admin_key: str) -> None:
    assert gateway.request("GET", "/api/version", key=None).status == 401
    lower = gateway.request("GET", "/api/version", headers={"Authorization": f"bearer {api_key}"})
    assert lower.status == 200, lower.body
    refused = gateway.request("DELETE", "/api/delete", key=api_key, body={"model": "nd-none:latest"})
    assert refused.status == 403 and b"admin key" in refused.body
    # With the admin key the request reaches the engine, which answers for itself (no such model).
    assert gateway.request("DELETE", "/api/delete", key=admin_key, body={"model": "nd-none:latest"}).status == 404


@pytest.mark.parametrize("path", ["/api/version", "/v1/models"])
def test_api_requires_the_device_key(gateway: Gateway, api_key: str, path: str) -> None:
    assert gateway.request("GET", path).status == 401
    assert gateway.request("GET", path, key="nd-wrong").status == 401
    assert gateway.request("GET", path, key=api_key + "x").status == 401
    ok = gateway.request("GET", path, key=api_key)
    assert ok.status == 200, ok.body
    if path == "/api/version":
        assert "version" in ok.json()
    else:
        assert ok.json()["object"] == "list"


def test_rejected_requests_never_reach_the_engine(host: Any, gateway: Gateway) -> None:
    marker = f"/api/unauthorised-{uuid.uuid4().hex}"
    assert gateway.request("GET", marker).status == 401
    assert gateway.request("GET", marker, key="nd-wrong").status == 401
    with host.sudo():
        log = host.check_output("journalctl -u neuraldrive-ollama.service --no-pager -o cat --since -5min")
    assert marker not in log


def test_engine_port_is_not_reachable_from_outside() -> None:
    port = int(os.environ["NEURALDRIVE_ENGINE_FORWARD_PORT"])
    # QEMU accepts on the host side; the guest refuses, so no HTTP answer ever comes back.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(b"GET /api/version HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = sock.recv(100)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            answer = b""
    assert answer == b"", answer


def test_certificate_names_the_device(host: Any) -> None:
    text = host.check_output("openssl x509 -in /var/lib/neuraldrive/tls/server.crt -noout -text")
    assert "DNS:neuraldrive" in text and "IP Address:127.0.0.1" in text
    issuer = host.check_output("openssl x509 -in /var/lib/neuraldrive/tls/server.crt -noout -issuer")
    assert "NeuralDrive device CA" in issuer
