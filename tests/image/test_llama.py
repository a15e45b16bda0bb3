"""llama.cpp's server (profile llama_server; the test profile runs it on the suite's model): it waits
for its model, serves it once the model is in the store, reached through the gateway at /llama/v1/
with the same key by the unmodified `openai` package; a wrong model name or setting is a clear state,
never a restart loop."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.image.helpers import Gateway, create_model

UNIT = "neuraldrive-llama-server.service"
CONF = "/etc/neuraldrive/llama-server.conf"
OVERRIDE = "/var/lib/neuraldrive/config/llama-server.conf"
PORT = 11440


@pytest.fixture(scope="module", autouse=True)
def enabled(host: Any) -> None:
    if not host.file(CONF).exists or "NEURALDRIVE_LLAMA_ENABLED=1" not in host.file(CONF).content_string:
        pytest.skip("this image does not run llama-server (profile llama_server.enabled)")


def configured_model(host: Any) -> str:
    return str(host.check_output(f"sed -n 's/^NEURALDRIVE_LLAMA_MODEL=//p' {CONF}")).strip()


def llama_state(host: Any) -> str:
    with host.sudo():
        return str(host.run("neuraldrive llama").stdout).strip()


def wait_for(host: Any, text: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = llama_state(host)
        if text in state:
            return state
        assert time.monotonic() < deadline, f"neuraldrive llama never said {text!r}; last: {state!r}"
        time.sleep(2)


def restart(host: Any, override: str | None) -> None:
    """Write (or remove) the persistent override and restart the unit, as an operator would."""
    with host.sudo():
        if override is None:
            host.check_output(f"rm -f {OVERRIDE}")
        else:
            host.check_output(f"printf '%s\\n' '{override}' > {OVERRIDE}")
        host.check_output(f"systemctl reset-failed {UNIT} || true")
        host.check_output(f"systemctl restart {UNIT}")


def unit_props(host: Any) -> dict[str, str]:
    with host.sudo():
        out = host.check_output(f"systemctl show {UNIT} -p ActiveState -p SubState -p Result -p NRestarts -p MainPID")
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def serving(host: Any, model: str) -> Iterator[str]:
    """The suite's model in the store, llama-server serving it (the profile's model, or the suite's own
    model name through the persistent override when NEURALDRIVE_TEST_MODEL_NAME differs)."""
    if model != configured_model(host):
        restart(host, f"NEURALDRIVE_LLAMA_MODEL={model}")
    wait_for(host, "  ready", timeout=180)
    yield model
    if model != configured_model(host):
        restart(host, None)


@pytest.fixture(scope="module")
def oai(api_key: str, host: Any) -> Iterator[Any]:
    context = ssl.create_default_context(cadata=host.file("/var/lib/neuraldrive/tls/ca.crt").content_string)
    context.check_hostname = False  # reached through a 127.0.0.1 forward; test_security checks the SANs
    http = openai.DefaultHttpxClient(verify=context, timeout=120)
    base = f"https://127.0.0.1:{os.environ['NEURALDRIVE_GATEWAY_PORT']}/llama/v1"
    yield openai.OpenAI(base_url=base, api_key=api_key, http_client=http, max_retries=0)
    http.close()


def test_serves_the_model_from_the_store_as_its_own_user(host: Any, serving: str) -> None:
    props = unit_props(host)
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    pid = props["MainPID"]
    with host.sudo():
        argv = host.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        owner = host.check_output(f"stat -c %U /proc/{pid}")
    assert "/usr/local/lib/ollama/llama-server --model /var/lib/neuraldrive/models/blobs/sha256-" in argv
    assert f"--alias {serving} --host 127.0.0.1 --port {PORT}" in argv
    assert owner == "neuraldrive-ollama"  # the engine's user; the store is read-only to it here
    assert host.socket(f"tcp://127.0.0.1:{PORT}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_openai_client_through_the_gateway(oai: Any, serving: str) -> None:
    assert [m.id for m in oai.models.list()] == [serving]
    reply = oai.chat.completions.create(model=serving, messages=[{"role": "user", "content": "Say hi"}],
                                        max_tokens=8)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    chunks = list(oai.chat.completions.create(model=serving, messages=[{"role": "user", "content": "Say hi"}],
                                              max_tokens=8, stream=True))
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_wrong_or_no_key_is_401(oai: Any, gateway: Gateway, serving: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        oai.with_options(api_key="nd-" + "x" * 43).models.list()
    assert gateway.request("GET", "/llama/v1/models").status == 401
    # Only /llama/v1/ reaches llama-server; its other routes (/health, /props, /slots) stay inside.
    assert gateway.request("GET", "/llama/health").status != 200


def test_exposure_on_the_guest(host: Any) -> None:
    with host.sudo():
        out = host.run(f"systemd-analyze security --no-pager {UNIT}").stdout
    score = float(out.rsplit("Overall exposure level for", 1)[1].split(":", 1)[1].split()[0])
    assert score <= 2.0, out[-2000:]


def test_a_model_not_in_the_store_waits_with_a_clear_status_then_starts_when_it_appears(
        host: Any, serving: str, tmp_path: Path) -> None:
    absent = "nd-llama-later:latest"
    restart(host, f"NEURALDRIVE_LLAMA_MODEL={absent}")
    try:
        state = wait_for(host, "waiting", timeout=30)
        assert f"model '{absent}' is not in the store" in state and "POST /api/pull" in state
        time.sleep(12)  # two more looks at the store: still waiting, never restarted
        props = unit_props(host)
        assert (props["ActiveState"], props["NRestarts"]) == ("active", "0")
        with host.sudo():
            journal = host.check_output(f"journalctl -u {UNIT} -b --no-pager -o cat")
        assert journal.count(f"waiting: model '{absent}' is not in the store") >= 1
        from tests.fixtures.tiny_gguf import write_tiny_gguf

        create_model(write_tiny_gguf(tmp_path / "later.gguf"), absent)
        wait_for(host, "  ready", timeout=60)
        assert unit_props(host)["NRestarts"] == "0"
    finally:
        restart(host, None if serving == configured_model(host) else f"NEURALDRIVE_LLAMA_MODEL={serving}")
        wait_for(host, "  ready", timeout=120)


def test_an_unusable_setting_fails_once_and_says_why(host: Any, serving: str) -> None:
    restart(host, f"NEURALDRIVE_LLAMA_MODEL={serving}\nNEURALDRIVE_LLAMA_FLASH_ATTN=maybe")
    try:
        deadline = time.monotonic() + 30
        while unit_props(host)["ActiveState"] != "failed":
            assert time.monotonic() < deadline, unit_props(host)
            time.sleep(1)
        time.sleep(8)  # RestartSec=5: a restart would have happened by now
        props = unit_props(host)
        assert (props["ActiveState"], props["Result"], props["NRestarts"]) == ("failed", "exit-code", "0")
        with host.sudo():
            journal = host.check_output(f"journalctl -u {UNIT} -b --no-pager -o cat -n 20")
        assert "NEURALDRIVE_LLAMA_FLASH_ATTN='maybe' is not one of on, off, auto" in journal
        assert "unit failed" in llama_state(host)
    finally:
        restart(host, None if serving == configured_model(host) else f"NEURALDRIVE_LLAMA_MODEL={serving}")
        wait_for(host, "  ready", timeout=120)


def test_neuraldrive_status_and_health_show_it(host: Any, serving: str) -> None:
    with host.sudo():
        status = host.check_output("neuraldrive status || true")
        health = host.check_output("neuraldrive health 2>&1 || true")
    assert f"llama.cpp {serving}  ready" in status
    assert f"ok: llama-server: ready ({serving})" in health
