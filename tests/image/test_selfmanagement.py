"""Self-management: idle unloading, the admin CLI and the health check."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.image.helpers import Gateway, wait_until_engine_answers

# A deliberate restart: the suite restarts the engine more often than its start limit (5 in 10 min)
# allows, which is meant for crash loops, not for tests.
RESTART_ENGINE = "systemctl reset-failed neuraldrive-ollama.service; systemctl restart neuraldrive-ollama.service"

IDLE_OVERRIDE = "/var/lib/neuraldrive/config/neuraldrive.conf"


def loaded(gateway: Gateway, key: str) -> list[str]:
    response = gateway.request("GET", "/api/ps", key=key)
    assert response.status == 200
    return [m["name"] for m in response.json()["models"]]


def load(gateway: Gateway, key: str, model: str) -> None:
    response = gateway.request("POST", "/api/generate", key=key, body={"model": model, "keep_alive": -1})
    assert response.status == 200, response.body
    assert model in loaded(gateway, key)


def idle_settings(host: Any, lines: str) -> None:
    with host.sudo():
        host.check_output(f"printf '{lines}' > {IDLE_OVERRIDE}")
        host.check_output("systemctl restart neuraldrive-gpu-idle.service")


def reset_idle_settings(host: Any, gateway: Gateway, key: str, model: str) -> None:
    with host.sudo():
        host.run(f"rm -f {IDLE_OVERRIDE}")
        host.run("systemctl restart neuraldrive-gpu-idle.service")
    gateway.request("POST", "/api/generate", key=key, body={"model": model, "keep_alive": 0})


def test_idle_manager_keeps_a_keep_alive_forever_model(host: Any, gateway: Gateway, api_key: str,
                                                       model: str) -> None:
    """keep_alive -1 means loaded for good: several idle timeouts pass, and a request that omits
    keep_alive (which keeps the -1, seed 002) changes nothing."""
    idle_settings(host, "NEURALDRIVE_IDLE_TIMEOUT=6\\nNEURALDRIVE_IDLE_INTERVAL=2\\n")
    try:
        load(gateway, api_key, model)
        time.sleep(15)
        assert model in loaded(gateway, api_key), "idle manager unloaded a keep_alive -1 model"
        response = gateway.request("POST", "/api/generate", key=api_key,
                                   body={"model": model, "prompt": "hi", "stream": False})
        assert response.status == 200, response.body
        time.sleep(15)
        assert model in loaded(gateway, api_key), "a request without keep_alive ended keep_alive -1"
    finally:
        reset_idle_settings(host, gateway, api_key, model)


def test_pinned_model_is_loaded_and_back_after_an_engine_restart(host: Any, gateway: Gateway,
                                                                api_key: str, model: str) -> None:
    # Not loaded to begin with (an earlier test may have left it loaded): the idle manager must load it.
    gateway.request("POST", "/api/generate", key=api_key, body={"model": model, "keep_alive": 0})
    deadline = time.monotonic() + 30
    while model in loaded(gateway, api_key):
        assert time.monotonic() < deadline, "the model did not unload with keep_alive 0"
        time.sleep(1)
    idle_settings(host, f"NEURALDRIVE_IDLE_TIMEOUT=6\\nNEURALDRIVE_IDLE_INTERVAL=2\\n"
                        f"NEURALDRIVE_IDLE_PINNED={model}\\n")
    try:
        deadline = time.monotonic() + 60
        while model not in loaded(gateway, api_key):
            assert time.monotonic() < deadline, "idle manager did not load the pinned model"
            time.sleep(2)
        with host.sudo():
            host.check_output(RESTART_ENGINE)
        wait_until_engine_answers(host, timeout=60)
        deadline = time.monotonic() + 60
        while model not in loaded(gateway, api_key):
            assert time.monotonic() < deadline, "pinned model not loaded again after an engine restart"
            time.sleep(2)
        time.sleep(10)  # more than an idle timeout: still there
        assert model in loaded(gateway, api_key)
        with host.sudo():
            log = host.check_output("journalctl -u neuraldrive-gpu-idle.service --no-pager -o cat --since -5min")
        assert log.count(f"loaded pinned model {model}") >= 2, log
    finally:
        reset_idle_settings(host, gateway, api_key, model)


def test_admin_cli_unload_all(host: Any, gateway: Gateway, api_key: str, model: str) -> None:
    load(gateway, api_key, model)
    with host.sudo():
        result = host.run("neuraldrive unload --all")
    assert result.rc == 0, result.stderr
    assert loaded(gateway, api_key) == []


def test_ollama_status_alias_prints_json(host: Any, gateway: Gateway, api_key: str, model: str) -> None:
    load(gateway, api_key, model)
    with host.sudo():
        status = json.loads(host.check_output("ollama-status"))
        host.run("ollama-unload")
    assert model in json.dumps(status)


def test_admin_status_shows_the_api_url(host: Any) -> None:
    with host.sudo():
        out = host.check_output("neuraldrive status")
    assert ":8443" in out


def test_console_shows_url_and_key_to_root_only(host: Any, api_key: str) -> None:
    with host.sudo():
        issue = host.file("/etc/issue").content_string
        issue_mode = host.file("/etc/issue").mode
    assert api_key in issue and ":8443" in issue
    assert issue_mode == 0o600  # agetty (root) shows it; no other account or service reads it
    # Caddy keeps no copy of its adapted config (which would hold the expanded key).
    with host.sudo():
        saved = host.run("grep -rl nd- /var/lib/neuraldrive-caddy /var/lib/caddy 2>/dev/null").stdout
    assert saved.strip() == ""


def test_health_check_restarts_a_stopped_engine(host: Any) -> None:
    assert host.service("neuraldrive-healthcheck.timer").is_running
    with host.sudo():
        host.check_output("systemctl stop neuraldrive-ollama.service")
        host.run("systemctl start neuraldrive-healthcheck.service")
    deadline = time.monotonic() + 60
    while not host.service("neuraldrive-ollama.service").is_running:
        assert time.monotonic() < deadline, "health check did not bring the engine back"
        time.sleep(2)
    wait_until_engine_answers(host)
    with host.sudo():
        host.run("systemctl reset-failed neuraldrive-healthcheck.service")


def test_a_full_persistence_partition_is_reported_not_fatal(host: Any, gateway: Gateway, api_key: str,
                                                            model: str) -> None:
    """Fill the persistence partition to the last block: the engine and the gateway keep serving, the
    health check reports it (a warning, no restart), and nothing already there is damaged."""
    filler = "/var/lib/neuraldrive/fill-test"
    with host.sudo():
        before = host.check_output("cd /var/lib/neuraldrive/models && find . -type f | sort | xargs sha256sum")
        engine_pid = host.check_output("systemctl show -p MainPID --value neuraldrive-ollama.service")
        host.run(f"fallocate -l $(df --output=avail -B1 /var/lib/neuraldrive | tail -1) {filler}; "
                 f"dd if=/dev/zero of={filler}.tail bs=4k status=none 2>/dev/null; sync")
        try:
            assert host.check_output("df --output=avail -B1 /var/lib/neuraldrive | tail -1").strip() == "0"
            assert gateway.request("GET", "/api/version", key=api_key).status == 200
            tags = gateway.request("GET", "/api/tags", key=api_key)
            assert tags.status == 200 and model in tags.body.decode()
            reply = gateway.request("POST", "/api/generate", key=api_key,
                                    body={"model": model, "prompt": "hi", "stream": False, "keep_alive": 0})
            assert reply.status == 200, reply.body
            check = host.run("systemctl start neuraldrive-healthcheck.service")
            log = host.check_output("journalctl -u neuraldrive-healthcheck.service -n 10 --no-pager -o cat")
            assert check.rc == 0, log  # exit 3 (warnings) counts as success: no recovery
            assert "warning: disk:" in log and "100% used" in log, log
            assert host.check_output(
                "systemctl show -p MainPID --value neuraldrive-ollama.service") == engine_pid
        finally:
            host.run(f"rm -f {filler} {filler}.tail; sync")
        after = host.check_output("cd /var/lib/neuraldrive/models && find . -type f | sort | xargs sha256sum")
    assert after == before


ENGINE_OVERRIDE = "/var/lib/neuraldrive/config/ollama.conf"
GPU_ENV = "/run/neuraldrive/gpu.env"
GPU_MARK = "/run/neuraldrive/health-gpu-restart"
FAKE_AMD = ('NEURALDRIVE_GPU_PRESENT="amd"\\nNEURALDRIVE_GPU_VENDOR="amd"\\nNEURALDRIVE_GPU_COUNT="1"\\n'
            'NEURALDRIVE_GPU_DEVICES=""\\nNEURALDRIVE_GPU_DRIVER="loaded"\\nNEURALDRIVE_GPU_BACKEND="vulkan"\\n'
            'OLLAMA_VULKAN="0"\\n')


def engine_invocation(host: Any) -> str:
    return str(host.check_output("systemctl show -P InvocationID neuraldrive-ollama.service"))


def test_cpu_fallback_restarts_the_engine_once_then_is_reported(host: Any, gateway: Gateway, api_key: str,
                                                                 model: str) -> None:
    """Seed 004: gpu.env says a GPU is driven, but the engine runs a model with size_vram 0 (the
    double's OLLAMA_TESTDOUBLE_CPU_FALLBACK=1): one engine restart, then only a report."""
    with host.sudo():
        host.check_output(f"cp {GPU_ENV} /run/gpu.env.saved && printf '{FAKE_AMD}' > {GPU_ENV}")
        host.check_output(f"if [ -e {ENGINE_OVERRIDE} ]; then cp -p {ENGINE_OVERRIDE} /run/ollama.conf.saved; fi; "
                          f"echo OLLAMA_TESTDOUBLE_CPU_FALLBACK=1 >> {ENGINE_OVERRIDE}; rm -f {GPU_MARK}")
        host.check_output(RESTART_ENGINE)
    try:
        wait_until_engine_answers(host, timeout=60)
        load(gateway, api_key, model)
        with host.sudo():
            before = engine_invocation(host)
            host.run("systemctl start neuraldrive-healthcheck.service")  # exits 4: OnFailure= recovers
            deadline = time.monotonic() + 60
            while engine_invocation(host) == before or not host.file(GPU_MARK).exists:
                assert time.monotonic() < deadline, "the GPU fault did not restart the engine"
                time.sleep(2)
        wait_until_engine_answers(host, timeout=60)
        load(gateway, api_key, model)
        with host.sudo():
            restarted = engine_invocation(host)
            host.run("systemctl reset-failed neuraldrive-healthcheck.service neuraldrive-healthcheck-recover.service")
            again = host.run("systemctl start neuraldrive-healthcheck.service")
            assert again.rc != 0  # exit 5: reported
            time.sleep(10)
            assert engine_invocation(host) == restarted, "a second GPU fault restarted the engine again"
            log = host.check_output("journalctl -u neuraldrive-healthcheck.service -u "
                                    "neuraldrive-healthcheck-recover.service --no-pager -o cat --since -5min")
        assert "fell back to the CPU" in log and "already restarted once this boot" in log
        assert "left alone" in log
    finally:
        with host.sudo():
            host.run(f"cp /run/gpu.env.saved {GPU_ENV}; rm -f {GPU_MARK} {ENGINE_OVERRIDE}; "
                     f"if [ -e /run/ollama.conf.saved ]; then mv /run/ollama.conf.saved {ENGINE_OVERRIDE}; fi")
            host.run(RESTART_ENGINE)
            host.run("systemctl reset-failed neuraldrive-healthcheck.service neuraldrive-healthcheck-recover.service")
        wait_until_engine_answers(host, timeout=60)
