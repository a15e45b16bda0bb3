"""gpu-idle: which models count as idle, and an unload that really frees the model. Models that stay (keep_alive
< 0, NEURALDRIVE_IDLE_PINNED): test_gpu_idle_pinned.py."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import clean_env, lib, program
from tests.fixtures.gpu_idle import GIB, Clock, manager

idle = lib("gpu_idle")
ollama = lib("ollama")


def test_unused_model_is_unloaded_after_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    mgr, engine, clock = manager(timeout=300)
    engine.put("llama3.2:latest", size_vram=3 * GIB)
    assert mgr.poll() == []  # newly loaded counts as used
    clock.now += 299
    assert mgr.poll() == []
    clock.now += 1
    assert mgr.poll() == ["llama3.2:latest"]
    assert engine.unloads == ["llama3.2:latest"]
    assert "unloaded llama3.2:latest after 300 s idle (freed 3.0 GiB of VRAM)" in (
        capsys.readouterr().out)


def test_a_request_resets_the_idle_time() -> None:
    mgr, engine, clock = manager(timeout=300)
    engine.put("qwen3:8b", expires_at="2025-11-22T10:05:00Z")
    mgr.poll()
    clock.now += 250
    engine.put("qwen3:8b", expires_at="2025-11-22T10:09:10Z")  # a request moved it
    mgr.poll()
    clock.now += 250
    assert mgr.poll() == []  # 250 s since the request, not 500 since loading
    clock.now += 50
    assert mgr.poll() == ["qwen3:8b"]


def test_models_idle_at_different_times() -> None:
    mgr, engine, clock = manager(timeout=60)
    engine.put("a:latest")
    mgr.poll()
    clock.now += 30
    engine.put("b:latest")
    mgr.poll()
    clock.now += 30
    assert mgr.poll() == ["a:latest"]
    clock.now += 30
    assert mgr.poll() == ["b:latest"]


def test_model_stuck_in_a_request_is_retried_after_another_timeout(
        capsys: pytest.CaptureFixture[str]) -> None:
    mgr, engine, clock = manager(timeout=60)
    engine.put("big:70b")
    engine.stuck.add("big:70b")
    mgr.poll()
    clock.now += 60
    assert mgr.poll() == []
    assert "still loaded" in capsys.readouterr().out
    clock.now += 30
    mgr.poll()
    assert engine.unloads == ["big:70b"]  # not hammered every poll
    engine.stuck.clear()
    clock.now += 30
    assert mgr.poll() == ["big:70b"]


def test_engine_down_is_logged_once_and_survived(capsys: pytest.CaptureFixture[str]) -> None:
    mgr, engine, clock = manager()
    engine.models = None
    for _ in range(3):
        assert mgr.poll() == []
        clock.now += 30
    out = capsys.readouterr().out
    assert out.count("engine not answering") == 1
    engine.models = {}
    mgr.poll()
    assert "engine answering again" in capsys.readouterr().out


def test_unload_really_waits_for_the_engine(ollama_double: OllamaDouble,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The double answers the unload 0.5 s before the model leaves /api/ps, like Ollama."""
    ollama_double.add_model("llama3.2", size=2 * GIB)
    client = ollama.Client(ollama_double.host)
    client.call("POST", "/api/generate", {"model": "llama3.2", "keep_alive": 3600})
    sent: list[dict[str, Any]] = []
    call = client.call

    def spy(method: str, path: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        if body is not None:
            sent.append(body)
        return call(method, path, body, **kw)

    client.call = spy
    clock = Clock()

    def sleep(seconds: float) -> None:  # real time passes for the engine, fake time for us
        time.sleep(seconds)
        clock.sleep(seconds)

    mgr = idle.IdleManager(client, timeout=60, clock=clock, sleep=sleep, unload_wait=5)
    mgr.poll()
    clock.now += 61
    assert mgr.poll() == ["llama3.2:latest"]
    assert client.ps() == []  # gone the moment poll() returns
    assert sent == [{"model": "llama3.2:latest", "keep_alive": 0, "stream": False}]
    assert "freed" in capsys.readouterr().out


def test_keep_alive_is_always_a_json_integer(ollama_double: OllamaDouble) -> None:
    for seconds in ("-1", "0", True, 1.5):
        with pytest.raises(TypeError):
            ollama.keep_alive_body("m", seconds)
    # The double, like Ollama, refuses the string form: the tests above would catch it.
    ollama_double.add_model("m")
    client = ollama.Client(ollama_double.host)
    with pytest.raises(ollama.EngineError, match="HTTP 400"):
        client.call("POST", "/api/generate", {"model": "m", "keep_alive": "-1"})


def dead_host() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_once_program(ollama_double: OllamaDouble) -> None:
    ok = subprocess.run([*program("usr/lib/neuraldrive/gpu-idle"), "--once"],
                        env=clean_env(OLLAMA_HOST=ollama_double.host), capture_output=True,
                        text=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([*program("usr/lib/neuraldrive/gpu-idle"), "--once"],
                          env=clean_env(OLLAMA_HOST=dead_host()), capture_output=True, text=True,
                          timeout=30, check=False)
    assert down.returncode == 1
    assert "engine not answering" in down.stdout
    assert "Traceback" not in down.stderr


def test_bad_setting_is_a_one_line_error() -> None:
    result = subprocess.run([*program("usr/lib/neuraldrive/gpu-idle"), "--once"],
                            env=clean_env(NEURALDRIVE_IDLE_TIMEOUT="5min"), capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr == "gpu-idle: NEURALDRIVE_IDLE_TIMEOUT='5min' is not a whole number\n"


def test_sigterm_stops_the_loop_cleanly() -> None:
    proc = subprocess.Popen([*program("usr/lib/neuraldrive/gpu-idle")],
                            env=clean_env(OLLAMA_HOST=dead_host(), NEURALDRIVE_IDLE_INTERVAL="30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "unloading models idle for 300 s" in proc.stdout.readline()
        time.sleep(0.2)  # into the 30 s wait
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopping" in out
