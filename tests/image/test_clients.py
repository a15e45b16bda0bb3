"""Unmodified clients through the gateway: the official `ollama` and `openai` Python packages, as an
operator's code would use them (only the base URL, the key and the device CA are ours)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest


@pytest.fixture(scope="module")
def base_url() -> str:
    return f"https://127.0.0.1:{os.environ['NEURALDRIVE_GATEWAY_PORT']}"


@pytest.fixture(scope="module")
def device_ca(host: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=host.file("/var/lib/neuraldrive/tls/ca.crt").content_string)
    context.check_hostname = False  # reached through a 127.0.0.1 forward; test_security checks the SANs
    return context


@pytest.fixture(scope="module")
def client(base_url: str, api_key: str, device_ca: ssl.SSLContext) -> Any:
    return ollama.Client(host=base_url, headers={"Authorization": f"Bearer {api_key}"}, verify=device_ca,
                         timeout=120)


@pytest.fixture(scope="module")
def admin(base_url: str, admin_key: str, device_ca: ssl.SSLContext) -> Any:
    return ollama.Client(host=base_url, headers={"Authorization": f"Bearer {admin_key}"}, verify=device_ca,
                         timeout=120)


@pytest.fixture(scope="module")
def oai(base_url: str, api_key: str, device_ca: ssl.SSLContext) -> Iterator[Any]:
    # openai's own HTTP client class (its HTTP library differs between major versions).
    http = openai.DefaultHttpxClient(verify=device_ca, timeout=120)
    yield openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, http_client=http, max_retries=0)
    http.close()


def test_ollama_list_show_ps(client: Any, model: str) -> None:
    assert model in [m.model for m in client.list().models]
    shown = client.show(model)
    assert shown.details is not None and shown.details.format == "gguf"
    client.generate(model=model, prompt="", keep_alive="1m")  # load without generating
    assert model in [m.model for m in client.ps().models]


def test_ollama_generate_and_chat(client: Any, model: str) -> None:
    reply = client.generate(model=model, prompt="Say hi", options={"num_predict": 4})
    assert reply.done and reply.eval_count and reply.eval_count > 0
    chunks = list(client.generate(model=model, prompt="Say hi", stream=True, options={"num_predict": 4}))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    chat = client.chat(model=model, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4})
    assert chat.message.role == "assistant" and chat.done
    streamed = list(client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=True,
                                options={"num_predict": 4}))
    assert streamed[-1].done and len(streamed) >= 2


def test_ollama_embed(client: Any, model: str) -> None:
    result = client.embed(model=model, input=["first", "second"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == len(result.embeddings[1]) > 0


def test_ollama_create_copy_delete_need_the_admin_key(client: Any, admin: Any, model: str) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.create(model="nd-derived:latest", from_=model, system="Answer briefly.")
    assert refused.value.status_code == 403 and "admin key" in refused.value.error
    admin.create(model="nd-derived:latest", from_=model, system="Answer briefly.")
    admin.copy("nd-derived:latest", "nd-copy:latest")
    names = [m.model for m in client.list().models]
    assert {"nd-derived:latest", "nd-copy:latest"} <= set(names)
    with pytest.raises(ollama.ResponseError):
        client.delete("nd-copy:latest")
    admin.delete("nd-copy:latest")
    admin.delete("nd-derived:latest")
    names = [m.model for m in client.list().models]
    assert "nd-copy:latest" not in names and model in names


def test_ollama_pull_failure_reaches_the_client(client: Any) -> None:
    # A registry on the host's closed port 9 (QEMU's user network maps 10.0.2.2 to the host): the pull
    # must fail as an error the client raises, not hang or kill the gateway.
    with pytest.raises(ollama.ResponseError):
        client.pull("10.0.2.2:9/library/nothing:latest", insecure=True)
    assert client.list() is not None


def test_openai_models_chat_embeddings(oai: Any, model: str) -> None:
    assert model in [m.id for m in oai.models.list().data]
    done = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert done.choices[0].message.role == "assistant"
    stream = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=4, stream=True)
    pieces = list(stream)
    assert pieces and pieces[-1].choices[0].finish_reason is not None
    embedded = oai.embeddings.create(model=model, input=["one", "two"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) > 0
