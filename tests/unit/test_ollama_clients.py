"""The official `ollama` and `openai` Python clients, unmodified, against the test double."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")
gguf = pytest.importorskip("gguf")

from builder.proof.ollama_double import SCRIPT  # noqa: E402


def tiny_gguf(path: Path, embedding_length: int = 8) -> Path:
    """A real (tiny) GGUF file written with the gguf package."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(embedding_length)
    writer.add_block_count(1)
    writer.add_head_count(1)
    writer.add_file_type(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, embedding_length), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def runners() -> list[str]:
    """Command lines of the llama-server children now running."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(args).decode(errors="replace")
        if "llama-server" in line and "--model" in line:
            found.append(line)
    return found


def test_ollama_client_list_show_ps_generate_chat(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    client = ollama.Client(host=ollama_double.url)
    assert [m.model for m in client.list().models] == ["tiny:latest"]
    assert client.show("tiny").details.format == "gguf"
    reply = client.generate(model="tiny", prompt="hi")
    assert reply.response == "test double reply" and reply.done
    assert "".join(p.response for p in client.generate(model="tiny", prompt="hi", stream=True)) == \
        "test double reply"
    chat = client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert chat.message.content == "test double reply"
    parts = client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(p.message.content or "" for p in parts) == "test double reply"
    [loaded] = client.ps().models
    assert loaded.model == "tiny:latest" and loaded.size_vram
    assert any(ollama_double.models_dir.as_posix() in r for r in runners())


def test_ollama_client_create_from_gguf_embed_copy_delete(ollama_double: Any, tmp_path: Path) -> None:
    client = ollama.Client(host=ollama_double.url)
    path = tiny_gguf(tmp_path / "tiny.gguf", embedding_length=8)
    digest = client.create_blob(path)  # HEAD then POST /api/blobs/<digest>
    statuses = [p.status for p in client.create(model="emb", files={"tiny.gguf": digest}, stream=True)]
    assert statuses[0] == "parsing GGUF" and statuses[-2:] == ["writing manifest", "success"]
    shown = client.show("emb")
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.details.family == "llama" and shown.details.quantization_level == "F16"
    vectors = client.embed(model="emb", input=["a", "b"]).embeddings
    assert len(vectors) == 2 and all(len(v) == 8 for v in vectors)
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-6 and vectors[0] != vectors[1]
    assert client.embed(model="emb", input="a").embeddings[0] == vectors[0]  # deterministic
    assert len(client.embeddings(model="emb", prompt="a").embedding) == 8
    client.copy("emb", "emb2")
    assert {m.model for m in client.list().models} == {"emb:latest", "emb2:latest"}
    client.delete("emb")
    assert [m.model for m in client.list().models] == ["emb2:latest"]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("emb")
    assert err.value.status_code == 404


def test_ollama_client_pull(ollama_double: Any, tmp_path: Path) -> None:
    client = ollama.Client(host=ollama_double.url)
    with pytest.raises(ollama.ResponseError, match="pull model manifest: file does not exist"):
        client.pull("ghost")


def test_openai_client(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    client = openai.OpenAI(base_url=ollama_double.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny:latest"]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "test double reply"
    chunks = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "test double reply"
    emb = client.embeddings.create(model="tiny", input=["x", "y"])  # base64 on the wire by default
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    raw = client.embeddings.create(model="tiny", input="x", encoding_format="float")
    assert np.allclose(raw.data[0].embedding, emb.data[0].embedding, atol=1e-6)  # float32 on the wire


def test_cli_create_from_modelfile_and_pull_from_local_registry(ollama_double: Any, tmp_path: Path) -> None:
    env = {"OLLAMA_HOST": ollama_double.host, "PATH": "/usr/bin:/bin"}
    tiny_gguf(tmp_path / "w.gguf")
    (tmp_path / "Modelfile").write_text('FROM ./w.gguf\nPARAMETER temperature 0.5\nSYSTEM """be brief"""\n')
    out = subprocess.run([sys.executable, str(SCRIPT), "create", "made", "-f", str(tmp_path / "Modelfile")],
                         env=env, capture_output=True, text=True, check=False, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "success" in out.stderr.splitlines()
    show = subprocess.run([sys.executable, str(SCRIPT), "show", "made"], env=env, capture_output=True,
                          text=True, check=True, timeout=30).stdout
    assert re.search(r"^    architecture +llama$", show, re.M) and re.search(r"^    quantization +F16$", show, re.M)
    out = subprocess.run([sys.executable, str(SCRIPT), "cp", "made", "copy"], env=env, capture_output=True,
                         text=True, check=True, timeout=30)
    assert out.stdout == "copied 'made' to 'copy'\n"
    out = subprocess.run([sys.executable, str(SCRIPT), "rm", "copy"], env=env, capture_output=True,
                         text=True, check=True, timeout=30)
    assert out.stdout == "deleted 'copy'\n"


