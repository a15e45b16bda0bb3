"""The llama-server test double (builder/proof/ollama_double/lib/ollama/llama-server): the routes
the appliance uses, with llama.cpp's shapes, its refusals, and the launcher driving it end to end."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.proof.ollama_double import write_model
from tests.fixtures.gpu import clean_env, program

DOUBLE = Path(__file__).resolve().parents[2] / "builder/proof/ollama_double/lib/ollama/llama-server"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if call(port, "GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("llama-server double never became ready")


def start(*args: str, **env: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-B", str(DOUBLE), "--port", str(port), *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(**env))
    return proc, port


@pytest.fixture(scope="module")
def server(gguf: Path) -> Iterator[int]:
    proc, port = start("-m", str(gguf), "--alias", "tiny:latest", "--host", "127.0.0.1", "-c", "2048",
                       "-ngl", "99", "-b", "512", "-t", "2", "-np", "1", "-fa", "off", "--offline", "--no-webui")
    wait_ready(port, proc)
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def run_double(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-B", str(DOUBLE), "--port", str(free_port()), *args],
                          capture_output=True, text=True, env=clean_env(), timeout=30, check=False)


def test_health_503_while_loading_then_200(gguf: Path) -> None:
    proc, port = start("-m", str(gguf), OLLAMA_TESTDOUBLE_LOAD_DELAY="1.5")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = call(port, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert (status, json.loads(body)) == (503, {"error": {"code": 503, "message": "Loading model",
                                                              "type": "unavailable_error"}})
        assert call(port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})[0] == 503
        wait_ready(port, proc)
        assert json.loads(call(port, "GET", "/health")[1]) == {"status": "ok"}
    finally:
        proc.kill()
        proc.wait()


def test_models_lists_the_alias_with_gguf_facts(server: int, gguf: Path) -> None:
    status, body = call(server, "GET", "/v1/models")
    answer = json.loads(body)
    assert status == 200 and answer["object"] == "list"
    (entry,) = answer["data"]
    assert (entry["id"], entry["object"], entry["owned_by"]) == ("tiny:latest", "model", "llamacpp")
    assert entry["meta"]["n_embd"] == 64 and entry["meta"]["n_ctx_train"] == 256  # tiny_gguf's KVs
    assert entry["meta"]["size"] == gguf.stat().st_size


def test_chat_non_stream_and_max_tokens(server: int) -> None:
    status, body = call(server, "POST", "/v1/chat/completions",
                        {"model": "anything", "messages": [{"role": "user", "content": "say hi"}]})
    answer = json.loads(body)
    assert status == 200 and answer["object"] == "chat.completion" and answer["model"] == "anything"
    assert answer["choices"] == [{"finish_reason": "stop", "index": 0,
                                  "message": {"role": "assistant", "content": "test double reply"}}]
    assert answer["usage"] == {"completion_tokens": 3, "prompt_tokens": 2, "total_tokens": 5}
    cut = json.loads(call(server, "POST", "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1})[1])
    assert cut["choices"][0]["finish_reason"] == "length" and cut["choices"][0]["message"]["content"] == "test"


def test_chat_stream_is_sse_ending_in_done(server: int) -> None:
    status, raw = call(server, "POST", "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "x"}], "stream": True,
                        "stream_options": {"include_usage": True}})
    assert status == 200
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == "test double reply"
    assert chunks[-2]["choices"][0] == {"finish_reason": "stop", "index": 0, "delta": {}}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1


def test_completions(server: int) -> None:
    answer = json.loads(call(server, "POST", "/v1/completions", {"prompt": "one two"})[1])
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"] == "test double reply"
    assert answer["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize(("method", "path", "body", "code", "kind", "message"), [
    ("POST", "/v1/chat/completions", {}, 400, "invalid_request_error", "'messages' is required"),
    ("POST", "/v1/completions", {}, 400, "invalid_request_error", "\"prompt\" must be provided"),
    ("POST", "/v1/embeddings", {"input": "x"}, 501, "not_supported_error", "Start it with `--embeddings`"),
    ("GET", "/v1/nothing", None, 404, "not_found_error", "File Not Found"),
])
def test_errors_have_llama_cpps_body(server: int, method: str, path: str, body: Any, code: int, kind: str,
                                     message: str) -> None:
    status, raw = call(server, method, path, body)
    error = json.loads(raw)["error"]
    assert (status, error["code"], error["type"]) == (code, code, kind) and message in error["message"]


def test_embeddings_only_with_the_flag(gguf: Path) -> None:
    proc, port = start("-m", str(gguf), "--embeddings")
    try:
        wait_ready(port, proc)
        answer = json.loads(call(port, "POST", "/v1/embeddings", {"input": ["a", "b c"]})[1])
        assert [d["index"] for d in answer["data"]] == [0, 1] and len(answer["data"][0]["embedding"]) == 64
        assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    finally:
        proc.kill()
        proc.wait()


def test_openai_client_against_the_double(server: int) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["tiny:latest"]
    reply = client.chat.completions.create(model="tiny:latest", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "test double reply"
    stream = client.chat.completions.create(model="tiny:latest", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "test double reply"


@pytest.mark.parametrize(("args", "message"), [
    (["-fa"], "expected value for argument"),
    (["-fa", "maybe"], "unknown value for --flash-attn: 'maybe'"),
    (["--bogus"], "error: invalid argument: --bogus"),
    (["-c", "big"], "error while handling argument \"-c\""),
])
def test_bad_arguments_exit_1(gguf: Path, args: list[str], message: str) -> None:
    result = run_double("-m", str(gguf), *args)
    assert result.returncode == 1 and message in result.stderr


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "text").write_bytes(b"hello world, not a model")
    result = run_double("-m", str(tmp_path / "text"))
    assert result.returncode == 1
    assert "invalid magic characters: 'hell', expected 'GGUF'" in result.stderr
    assert "main: exiting due to model loading error" in result.stderr
    missing = run_double("-m", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "failed to open GGUF file" in missing.stderr


def test_launcher_waits_for_the_model_then_runs_the_double(tmp_path: Path, gguf: Path) -> None:
    """The appliance's path: neuraldrive's launcher resolves a pulled model and execs the double."""
    store, port = tmp_path / "models", free_port()
    write_model(store, "other:latest")
    conf = tmp_path / "llama-server.conf"
    conf.write_text(f"NEURALDRIVE_LLAMA_MODEL=tiny:latest\nNEURALDRIVE_LLAMA_PORT={port}\n"
                    "NEURALDRIVE_LLAMA_CTX_SIZE=512\nNEURALDRIVE_LLAMA_FLASH_ATTN=off\n")
    launcher = subprocess.Popen([*program("usr/lib/neuraldrive/llama-server"), "--conf", str(conf), "--models",
                                 str(store), "--binary", str(DOUBLE)], text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=clean_env())
    try:
        time.sleep(1)
        assert launcher.poll() is None  # waiting, not failing
        manifest = store / "manifests/registry.ollama.ai/library/tiny/latest"
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                    "digest": "sha256:" + "a" * 64}]}))
        (store / "blobs" / ("sha256-" + "a" * 64)).write_bytes(gguf.read_bytes())
        wait_ready(port, launcher, timeout=30)
        assert json.loads(call(port, "GET", "/v1/models")[1])["data"][0]["id"] == "tiny:latest"
    finally:
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=10)
    assert launcher.returncode == 0, err
    assert out.count("waiting: model 'tiny:latest' is not in the store") == 1
    assert f"main: server is listening on http://127.0.0.1:{port}" in err
