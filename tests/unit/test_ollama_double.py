"""Tests for the Ollama-API test double (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from builder.proof.ollama_double import SCRIPT
from builder.proof.ollama_double.package import ARCHIVE_NAME, build_archive

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(method: str, url: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, _headers, raw = request(method, url, body)
    return status, json.loads(raw)


def ps_names(url: str) -> list[str]:
    return [m["name"] for m in call("GET", url + "/api/ps")[1]["models"]]


def wait_until_unloaded(url: str, name: str, timeout: float = 5.0) -> float:
    """Poll /api/ps like a real client must; returns seconds waited."""
    start = time.monotonic()
    while name in ps_names(url):
        assert time.monotonic() - start < timeout, f"{name} still loaded"
        time.sleep(0.05)
    return time.monotonic() - start


def run_cli(host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env["OLLAMA_HOST"] = host
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=20)


@functools.cache
def load_script(module: str = "goenv") -> ModuleType:
    """A module of the double (lib/ollama/testdouble/): by default its Go semantics, goenv.py."""
    lib = str(SCRIPT.parent / "lib" / "ollama")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    return importlib.import_module(f"testdouble.{module}")


# ---- program basics ---------------------------------------------------------

def test_version_asks_the_server(ollama_double: Any) -> None:
    """versionHandler (cmd/cmd.go): the server's version; warnings when it is down."""
    assert os.access(SCRIPT, os.X_OK)
    for flag in ("--version", "-v"):
        out = run_cli(ollama_double.host, flag)
        assert out.stdout == "ollama version is 0.0.0-testdouble\n"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{sock.getsockname()[1]}"
    out = run_cli(down, "--version")
    assert out.returncode == 0
    assert out.stdout == ("Warning: could not connect to a running Ollama instance\n"
                          "Warning: client version is 0.0.0-testdouble\n")


def test_help_mentions_test_double() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"],
                         capture_output=True, text=True, check=True)
    assert "TEST DOUBLE" in out.stdout and "serve" in out.stdout


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300), ("30s", 30), ("1h", 3600), ("1.5h", 5400), ("1h30m", 5400),
    ("-1s", -1), ("0", 0), ("500ms", 0.5),
])
def test_go_duration_parser(text: str, seconds: float) -> None:
    assert load_script().parse_go_duration(text) == int(seconds * 10**9)


@pytest.mark.parametrize(("text", "message"), [
    ("-1", 'time: missing unit in duration "-1"'),
    ("10", 'time: missing unit in duration "10"'),
    ("5x", 'time: unknown unit "x" in duration "5x"'),
    ("", 'time: invalid duration ""'),
    ("m", 'time: invalid duration "m"'),
])
def test_go_duration_errors(text: str, message: str) -> None:
    module = load_script()
    with pytest.raises(module.DurationError, match="^" + message.replace(".", r"\.") + "$"):
        module.parse_go_duration(text)


# ---- native HTTP API ----------------------------------------------------------

def test_root_version_and_headers(ollama_double: Any) -> None:
    status, headers, body = request("GET", ollama_double.url + "/")
    assert (status, body) == (200, b"Ollama is running")
    assert headers["Server"] == "ollama-test-double"
    status, headers, body = request("HEAD", ollama_double.url + "/")
    assert (status, body) == (200, b"")
    assert call("GET", ollama_double.url + "/api/version") == (200, {"version": "0.0.0-testdouble"})


def test_unknown_path_is_404(ollama_double: Any) -> None:
    status, headers, _ = request("GET", ollama_double.url + "/api/nope")
    assert status == 404 and headers["Server"] == "ollama-test-double"


def test_tags_lists_added_models(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    ollama_double.add_model("big:7b", size=8 * 10**9)
    status, body = call("GET", ollama_double.url + "/api/tags")
    assert status == 200
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"tiny:latest", "big:7b"}
    tiny = models["tiny:latest"]
    assert tiny["model"] == "tiny:latest" and tiny["size"] == 1234
    assert models["big:7b"]["size"] == 8 * 10**9
    assert len(tiny["digest"]) == 64
    assert tiny["details"]["format"] == "gguf" and tiny["details"]["family"] == "testdouble"
    assert {"parameter_size", "quantization_level"} <= set(tiny["details"])
    datetime.fromisoformat(tiny["modified_at"])


def test_load_forever_shows_in_ps(ollama_double: Any) -> None:
    ollama_double.add_model("tiny", size=5000)
    status, body = call("POST", ollama_double.url + "/api/generate",
                        {"model": "tiny", "keep_alive": -1})
    assert status == 200
    assert (body["model"], body["response"], body["done"], body["done_reason"]) == \
        ("tiny", "", True, "load")
    [loaded] = call("GET", ollama_double.url + "/api/ps")[1]["models"]
    assert loaded["name"] == "tiny:latest"
    assert loaded["size"] == loaded["size_vram"] == 5000
    assert datetime.fromisoformat(loaded["expires_at"]).year > 2300
    assert loaded["context_length"] > 0 and loaded["details"]["format"] == "gguf"


def test_unload_answers_before_eviction(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": -1})
    status, body = call("POST", ollama_double.url + "/api/generate",
                        {"model": "tiny", "keep_alive": 0})
    assert status == 200 and body["done_reason"] == "unload" and body["done"] is True
    assert ps_names(ollama_double.url) == ["tiny:latest"]  # not evicted yet
    assert wait_until_unloaded(ollama_double.url, "tiny:latest") > 0.2


def test_keep_alive_string_needs_unit(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    for value in ("-1", "10"):
        status, body = call("POST", ollama_double.url + "/api/generate",
                            {"model": "tiny", "keep_alive": value})
        assert status == 400
        assert body == {"error": f'time: missing unit in duration "{value}"'}
    status, _ = call("POST", ollama_double.url + "/api/generate",
                     {"model": "tiny", "keep_alive": "5m"})
    assert status == 200
    [loaded] = call("GET", ollama_double.url + "/api/ps")[1]["models"]
    remaining = datetime.fromisoformat(loaded["expires_at"]) - datetime.now(UTC)
    assert 290 < remaining.total_seconds() <= 300


def test_expired_model_leaves_ps(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": 0.3})
    assert ps_names(ollama_double.url) == ["tiny:latest"]
    wait_until_unloaded(ollama_double.url, "tiny:latest")


def test_unknown_model_is_404(ollama_double: Any) -> None:
    status, body = call("POST", ollama_double.url + "/api/generate",
                        {"model": "ghost", "keep_alive": 0})
    assert (status, body) == (404, {"error": "model 'ghost' not found"})


def test_generate_with_prompt(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    status, body = call("POST", ollama_double.url + "/api/generate",
                        {"model": "tiny", "prompt": "hi", "stream": False})
    assert status == 200
    assert (body["response"], body["done_reason"], body["eval_count"]) == \
        ("test double reply", "stop", 3)
    assert ps_names(ollama_double.url) == ["tiny:latest"]
    # Streaming is the default: NDJSON lines, the last one done.
    status, headers, raw = request("POST", ollama_double.url + "/api/generate",
                                   {"model": "tiny", "prompt": "hi"})
    lines = [json.loads(line) for line in raw.splitlines()]
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert "".join(x["response"] for x in lines) == "test double reply"
    assert lines[-1]["done"] is True and not any(x["done"] for x in lines[:-1])


# ---- OpenAI-compatible API ------------------------------------------------------

def test_v1_models(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    status, body = call("GET", ollama_double.url + "/v1/models")
    assert status == 200 and body["object"] == "list"
    [model] = body["data"]
    assert (model["id"], model["object"], model["owned_by"]) == ("tiny:latest", "model", "library")
    assert isinstance(model["created"], int)


def test_v1_chat_completions(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    status, body = call("POST", ollama_double.url + "/v1/chat/completions",
                        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body["object"] == "chat.completion" and body["id"]
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "test double reply"}
    assert choice["finish_reason"] == "stop" and body["usage"]["total_tokens"] > 0
    status, body = call("POST", ollama_double.url + "/v1/chat/completions",
                        {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404
    assert body["error"]["type"] == "api_error" and "ghost" in body["error"]["message"]


# ---- CLI client -----------------------------------------------------------------

def test_cli_list(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    out = run_cli(ollama_double.host, "list")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.startswith("tiny:latest") and "1.2 KB" in row


def test_cli_ps_and_stop(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": -1})
    out = run_cli(ollama_double.host, "ps")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert row.startswith("tiny:latest") and "100% GPU" in row and "Forever" in row
    out = run_cli(ollama_double.host, "stop", "tiny")
    assert out.returncode == 0, out.stderr
    wait_until_unloaded(ollama_double.url, "tiny:latest")
    out = run_cli(ollama_double.host, "stop", "ghost")
    assert out.returncode == 1 and "ghost" in out.stderr


def test_cli_errors_when_server_down() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = run_cli(f"127.0.0.1:{port}", "list")
    assert out.returncode == 1
    assert out.stderr.startswith("Error: could not connect to ollama server")


def test_serve_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path),
           "HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        while "Listening on" not in proc.stderr.readline():
            assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


# ---- release-style archive ------------------------------------------------------

def test_archive_is_reproducible_and_official_layout(tmp_path: Path) -> None:
    first = build_archive(tmp_path / "a")
    second = build_archive(tmp_path / "b")
    assert first.name == second.name == ARCHIVE_NAME
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(second.read_bytes()).hexdigest()
    assert sorted(p.name for p in first.parent.iterdir()) == [ARCHIVE_NAME]  # no temp files

    tar_path = tmp_path / "x.tar"
    subprocess.run(["zstd", "-q", "-d", str(first), "-o", str(tar_path)], check=True)
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {"bin", "bin/ollama", "lib", "lib/ollama", "lib/ollama/TEST-DOUBLE",
                "lib/ollama/llama-server", "lib/ollama/testdouble/cli.py"} <= set(members)
        assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc")]
        assert members["lib/ollama/llama-server"].mode == 0o755
        assert members["bin/ollama"].mode == 0o755 and members["bin/ollama"].isfile()
        assert all(m.uid == 0 and m.uname == "root" for m in members.values())
        tar.extractall(tmp_path / "root", filter="data")
    binary = tmp_path / "root" / "bin" / "ollama"
    assert stat.S_IMODE(binary.stat().st_mode) & 0o111
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=True)
    assert "TEST DOUBLE" in out.stdout


# ---- keep_alive kept by a request that omits it (seed 002), CPU fallback ---------------

def test_omitted_keep_alive_keeps_the_loaded_value(ollama_double: Any) -> None:
    """server/sched.go: only a request that sets keep_alive changes a loaded runner's duration."""
    ollama_double.add_model("tiny")
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": -1})
    status, _ = call("POST", ollama_double.url + "/api/generate",
                     {"model": "tiny", "prompt": "hi", "stream": False})
    assert status == 200
    [loaded] = call("GET", ollama_double.url + "/api/ps")[1]["models"]
    assert datetime.fromisoformat(loaded["expires_at"]).year > datetime.now(UTC).year + 200
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": "5m"})
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False})
    [loaded] = call("GET", ollama_double.url + "/api/ps")[1]["models"]
    remaining = datetime.fromisoformat(loaded["expires_at"]) - datetime.now(UTC)
    assert 240 < remaining.total_seconds() <= 300


def test_size_vram_is_size_unless_told_to_fall_back(ollama_double: Any) -> None:
    ollama_double.add_model("tiny", size=5000)
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": -1})
    [loaded] = call("GET", ollama_double.url + "/api/ps")[1]["models"]
    assert loaded["size_vram"] == loaded["size"] > 0


@pytest.mark.double_env(OLLAMA_TESTDOUBLE_CPU_FALLBACK="1")
def test_cpu_fallback_reports_no_vram(ollama_double: Any) -> None:
    ollama_double.add_model("tiny", size=5000)
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": -1})
    [loaded] = call("GET", ollama_double.url + "/api/ps")[1]["models"]
    assert loaded["size_vram"] == 0 and loaded["size"] > 0


@pytest.mark.double_env(OLLAMA_TESTDOUBLE_STREAM_DELAY_MS="300")
def test_stream_delay_paces_each_streamed_chunk(ollama_double: Any) -> None:
    """For fault tests: a reply that is still streaming when the engine is killed."""
    ollama_double.add_model("tiny", size=5000)
    started = time.monotonic()
    status, _headers, raw = request("POST", ollama_double.url + "/api/generate", {"model": "tiny", "prompt": "hi"})
    assert status == 200 and len(raw.splitlines()) == 4  # three tokens and the final line
    assert time.monotonic() - started >= 4 * 0.3
