"""The Ollama-API test double's HTTP API (real HTTP on 127.0.0.1): native /api routes, the OpenAI-compatible
/v1 routes, keep_alive kept by a request that omits it, CPU fallback and paced streaming."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fixtures.ollama_double import call, ps_names, request, wait_until_unloaded

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
