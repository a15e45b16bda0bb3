"""The profile's llama_server section: accepted forms and every kind of bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import ProfileError
from builder.profile import load_profile
from builder.profile.llama_checks import is_model_reference


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "custom.yaml"
    path.write_text("extends: cpu\n" + text, encoding="utf-8")
    return str(path)


def test_off_by_default_and_seed_001_options_load(tmp_path: Path) -> None:
    assert not load_profile("default").llama_server.enabled
    section = load_profile(write(tmp_path, (
        "llama_server: {enabled: true, model: 'qwen2.5:0.5b', n_gpu_layers: 35, ctx_size: 4096,"
        " batch_size: 2048, threads: 6, flash_attn: 'on', parallel: 1}\n"))).llama_server
    assert (section.model, section.n_gpu_layers, section.ctx_size, section.batch_size, section.threads,
            section.flash_attn, section.parallel) == ("qwen2.5:0.5b", 35, 4096, 2048, 6, "on", 1)


@pytest.mark.parametrize("reference", ["tiny", "tiny:latest", "library/tiny:q4_K_M", "hf.co/x:1",
                                       "/var/lib/neuraldrive/models/gguf/tiny.gguf"])
def test_model_references_accepted(reference: str) -> None:
    assert is_model_reference(reference)


@pytest.mark.parametrize("reference", ["Tiny", "tiny model", "/etc/shadow", "/var/lib/neuraldrive/models/x",
                                       "/var/lib/neuraldrive/models/../secrets/api-key.gguf",
                                       "/var/lib/neuraldrive/models/-x.gguf", "/var/lib/neuraldrive/models/a b.gguf",
                                       "tiny:", ":tag", "../x", "$(reboot)", "tiny;reboot", "-m"])
def test_model_references_refused(reference: str) -> None:
    assert not is_model_reference(reference)


@pytest.mark.parametrize(("text", "message"), [
    ("llama_server: {enabled: true}\n", "llama_server.model: required when llama_server.enabled is true"),
    ("llama_server: {model: 'x y'}\n", "llama_server.model: 'x y' is neither an Ollama model name"),
    ("llama_server: {model: /etc/passwd}\n", "is neither an Ollama model name"),
    ("llama_server: {flash_attn: true}\n", "llama_server.flash_attn: must be a string"),
    ("llama_server: {flash_attn: maybe}\n", "llama_server.flash_attn: 'maybe' is not one of on, off, auto"),
    ("llama_server: {n_gpu_layers: -1}\n", "llama_server.n_gpu_layers: -1 is not in 0-4096"),
    ("llama_server: {ctx_size: 99999999999}\n", "llama_server.ctx_size"),
    ("llama_server: {batch_size: 0}\n", "llama_server.batch_size: 0 is not in"),
    ("llama_server: {threads: '4'}\n", "llama_server.threads: must be an integer"),
    ("llama_server: {parallel: 0}\n", "llama_server.parallel: 0 is not in 1-256"),
    ("llama_server: {embeddings: 1}\n", "llama_server.embeddings: must be true or false"),
    ("llama_server: {port: 8080}\n", "llama_server.port: unknown key"),
    ("gateway: {port: 11440}\n", "gateway.port: 11440 is already used by llama-server"),
    ("ollama:\n  instances: [{name: a, port: 11440}]\n", "already used by llama-server"),
])
def test_bad_values_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProfileError) as err:
        load_profile(write(tmp_path, text))
    assert str(err.value).startswith(str(tmp_path / "custom.yaml"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
