"""Engine instances (profile ollama.instances; the test profile has two): each behind the gateway at
/i/NAME/ with the same key, watched by its own idle manager and health check, shown by status."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.image.helpers import Gateway


def instance_names(host: Any) -> list[str]:
    listed = host.run("ls /etc/neuraldrive/instances").stdout.split()
    return sorted(name.removesuffix(".conf") for name in listed if name.endswith(".conf"))


@pytest.fixture(scope="module")
def names(host: Any) -> list[str]:
    found = instance_names(host)
    if len(found) < 2:
        pytest.skip("this image has fewer than two engine instances (profile ollama.instances)")
    return found


def wait_active(host: Any, unit: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not host.service(unit).is_running:
        assert time.monotonic() < deadline, f"{unit} is not running"
        time.sleep(2)


def test_instances_routed_with_the_same_key(host: Any, gateway: Gateway, api_key: str, admin_key: str,
                                            names: list[str]) -> None:
    ports = set()
    for name in names:
        wait_active(host, f"neuraldrive-ollama@{name}.service")
        port = host.check_output(f"sed -n 's/^OLLAMA_HOST=127.0.0.1://p' /etc/neuraldrive/instances/{name}.conf")
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
        ports.add(port)
        assert gateway.request("GET", f"/i/{name}/api/version").status == 401
        ok = gateway.request("GET", f"/i/{name}/api/tags", key=api_key)
        assert ok.status == 200, ok.body
        assert ok.json()["models"] == []  # its own store, not the main engine's
        assert gateway.request("GET", f"/i/{name}/v1/models", key=api_key).status == 200
        refused = gateway.request("DELETE", f"/i/{name}/api/delete", key=api_key, body={"model": "nd-none"})
        assert refused.status == 403
        assert gateway.request("DELETE", f"/i/{name}/api/delete", key=admin_key,
                               body={"model": "nd-none"}).status == 404  # reached that engine
    assert len(ports) == len(names)
    assert gateway.request("GET", "/i/nd-none/api/tags", key=api_key).status != 200


def test_instances_watched_and_shown(host: Any, names: list[str]) -> None:
    for name in names:
        wait_active(host, f"neuraldrive-gpu-idle@{name}.service")
        assert host.service(f"neuraldrive-healthcheck@{name}.timer").is_running
    with host.sudo():
        status = host.check_output("neuraldrive status")
        assert "Instances" in status, status
        for name in names:
            assert any(name in line.split() for line in status.splitlines()), status
            assert host.run(f"neuraldrive -i {name} models").rc == 0
        # The health check of one instance brings that instance back, and only that one.
        first, other = names[0], names[1]
        before = host.check_output(f"systemctl show -P InvocationID neuraldrive-ollama@{other}.service")
        host.check_output(f"systemctl stop neuraldrive-ollama@{first}.service")
        host.run(f"systemctl start neuraldrive-healthcheck@{first}.service")
        wait_active(host, f"neuraldrive-ollama@{first}.service")
        after = host.check_output(f"systemctl show -P InvocationID neuraldrive-ollama@{other}.service")
        assert before == after
        log = host.check_output(f"journalctl -u neuraldrive-healthcheck@{first}.service --no-pager -o cat "
                                "--since -5min")
        host.run(f"systemctl reset-failed neuraldrive-healthcheck@{first}.service")
    assert "engine: no valid answer" in log
