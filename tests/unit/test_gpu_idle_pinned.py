"""gpu-idle's models that stay: keep_alive < 0 (Ollama's 'forever') and NEURALDRIVE_IDLE_PINNED, loaded again
after the engine forgets them."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import clean_env, lib, program
from tests.fixtures.gpu_idle import FOREVER, SOON, Clock, manager

idle = lib("gpu_idle")
ollama = lib("ollama")


@pytest.mark.parametrize(("expires_at", "forever"), [
    (FOREVER, True), ("2318-02-19T13:00:00.123+01:00", True), ("2126-01-01T00:00:00Z", True),
    (SOON, False), ("2125-12-31T23:59:59Z", False), ("", False), ("0001-01-01T00:00:00Z", False),
    ("garbage", False)])
def test_loaded_forever(expires_at: str, forever: bool) -> None:
    assert idle.loaded_forever(expires_at, 2026) is forever


def test_keep_alive_forever_model_is_never_unloaded() -> None:
    mgr, engine, clock = manager(timeout=60)
    engine.put("big:70b", expires_at=FOREVER)
    engine.put("small:1b")
    mgr.poll()
    for _ in range(10):
        clock.now += 60
        mgr.poll()
    assert engine.unloads == ["small:1b"]
    assert "big:70b" in engine.models


def test_forever_model_used_without_keep_alive_still_stays() -> None:
    """Seed 002: a request that omits keep_alive keeps the -1 it was loaded with, so Ollama
    moves expires_at to another ~292 years ahead; a request with keep_alive 5m ends that."""
    mgr, engine, clock = manager(timeout=60)
    engine.put("m:latest", expires_at=FOREVER)
    mgr.poll()
    clock.now += 120
    engine.put("m:latest", expires_at="2318-02-19T12:02:00.000000000Z")  # used, keep_alive omitted
    assert mgr.poll() == []
    clock.now += 120
    assert mgr.poll() == []
    engine.put("m:latest", expires_at=SOON)  # a request set keep_alive "5m"
    mgr.poll()
    clock.now += 60
    assert mgr.poll() == ["m:latest"]


def test_pinned_model_is_loaded_kept_and_loaded_again(capsys: pytest.CaptureFixture[str]) -> None:
    mgr, engine, clock = manager(timeout=60, pinned=("llama3.2", "other:7b"))
    engine.put("llama3.2:latest")  # loaded by a client with keep_alive 5m
    mgr.poll()
    assert engine.loads == ["llama3.2:latest", "other:7b"]  # names made canonical; both to -1
    assert "loaded pinned model other:7b (keep_alive -1)" in capsys.readouterr().out
    clock.now += 600
    mgr.poll()
    assert engine.unloads == [] and len(engine.loads) == 2
    engine.models = None  # engine restarting: nothing to do, nothing loaded
    clock.now += 30
    mgr.poll()
    engine.models = {}  # back, empty
    clock.now += 30
    mgr.poll()
    assert engine.loads[2:] == ["llama3.2:latest", "other:7b"]
    assert set(engine.models) == {"llama3.2:latest", "other:7b"}


def test_pinned_model_that_fails_to_load_is_retried_later(capsys: pytest.CaptureFixture[str]) -> None:
    mgr, engine, clock = manager(timeout=60, pinned=("ghost",))
    engine.missing.add("ghost:latest")
    mgr.poll()
    out = capsys.readouterr().out
    assert "could not load pinned model ghost:latest: POST /api/generate: HTTP 404" in out
    for _ in range(5):
        clock.now += 30
        mgr.poll()
    assert engine.loads == ["ghost:latest"]  # not every poll
    clock.now += idle.PIN_RETRY_S
    engine.missing.clear()
    mgr.poll()
    assert engine.loads == ["ghost:latest", "ghost:latest"] and "ghost:latest" in engine.models


def test_pinned_from_the_environment() -> None:
    settings = lib("common").Settings({"NEURALDRIVE_IDLE_PINNED": "llama3.2, qwen3:8b  ns/m:q4_K_M"})
    assert idle.pinned_models(settings) == ("llama3.2", "qwen3:8b", "ns/m:q4_K_M")
    result = subprocess.run([*program("usr/lib/neuraldrive/gpu-idle"), "--once"],
                            env=clean_env(NEURALDRIVE_IDLE_PINNED="ok $(id)"), capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr == ("gpu-idle: NEURALDRIVE_IDLE_PINNED: '$(id)' is not a model name "
                             "(name[:tag])\n")


def test_pinned_model_comes_back_after_an_engine_restart(ollama_double: OllamaDouble) -> None:
    """On the double: the manager loads the pinned model with keep_alive -1 and never unloads it;
    when the engine forgets it (as a restart does), the next poll loads it again."""
    ollama_double.add_model("tiny")
    client = ollama.Client(ollama_double.host)
    clock = Clock()
    mgr = idle.IdleManager(client, timeout=60, clock=clock, sleep=clock.sleep, pinned=("tiny",))
    mgr.poll()
    [entry] = client.ps()
    assert entry["name"] == "tiny:latest" and idle.loaded_forever(entry["expires_at"], time.gmtime().tm_year)
    client.call("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False})
    clock.now += 600
    assert mgr.poll() == []
    assert client.unload("tiny", wait=5)  # gone, as after a restart
    mgr.poll()
    assert [e["name"] for e in client.ps()] == ["tiny:latest"]
