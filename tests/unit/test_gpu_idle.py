"""gpu-idle: which models count as idle, and an unload that really frees the model."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import clean_env, lib, program

idle = lib("gpu_idle")
ollama = lib("ollama")

FOREVER = "2318-02-19T12:00:00.000000000Z"  # what Ollama reports for keep_alive -1
SOON = "2026-02-19T12:05:00.000000000Z"  # an ordinary keep_alive (5m)
GIB = 2**30


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedEngine:
    """/api/ps answers set by the test; unloads take effect at once unless `stuck`."""

    url = "http://127.0.0.1:11434"

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] | None = {}
        self.unloads: list[str] = []
        self.loads: list[str] = []
        self.stuck: set[str] = set()
        self.missing: set[str] = set()  # load() answers 404 for these

    def put(self, name: str, expires_at: str = SOON, size_vram: int = 4 * GIB) -> None:
        assert self.models is not None
        self.models[name] = {"name": name, "model": name, "size": size_vram,
                             "size_vram": size_vram, "expires_at": expires_at}

    def ps(self) -> list[dict[str, Any]]:
        if self.models is None:
            raise ollama.EngineDownError("engine not answering at http://127.0.0.1:11434 (refused)")
        return list(self.models.values())

    def request_unload(self, model: str) -> None:
        self.unloads.append(model)
        if model not in self.stuck and self.models is not None:
            self.models.pop(model, None)

    def load(self, model: str) -> None:
        self.loads.append(model)
        if model in self.missing:
            raise ollama.EngineError(f"POST /api/generate: HTTP 404: model '{model}' not found")
        self.put(model, expires_at=FOREVER)

    def wait_gone(self, models: list[str], wait: float = 30, poll: float = 0.2, sleep: Any = None,
                  clock: Any = None) -> list[str]:
        return [m for m in models if self.models and m in self.models]


def manager(timeout: float = 300, pinned: tuple[str, ...] = ()) -> tuple[Any, ScriptedEngine, Clock]:
    engine, clock = ScriptedEngine(), Clock()
    return idle.IdleManager(engine, timeout, clock=clock, sleep=clock.sleep, pinned=pinned,
                            year=lambda: 2026), engine, clock


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


# ---- models that stay: keep_alive < 0 and NEURALDRIVE_IDLE_PINNED -------------------------

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
