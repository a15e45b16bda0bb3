"""issue-refresh: what the console shows a person who wants to connect a client."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import FakeRunner, clean_env, lib, program

gpu = lib("gpu")
issue = lib("issue_refresh")

IP_JSON = json.dumps([{"ifname": "enp1s0", "addr_info": [
    {"family": "inet", "local": "10.0.2.15", "scope": "global"}]}])


def refresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str,
            runner: FakeRunner | None = None) -> tuple[int, FakeRunner]:
    monkeypatch.setenv("OLLAMA_HOST", host)
    monkeypatch.setenv("NEURALDRIVE_GATEWAY_PORT", "8443")
    run = runner or FakeRunner({("ip",): (0, IP_JSON, "")})
    code = issue.main(["--output", str(tmp_path / "issue"), "--key-file", str(tmp_path / "key"),
                       "--gpu-env", str(tmp_path / "gpu.env")], run)
    return code, run


def dead_host() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_console_shows_url_key_and_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          ollama_double: OllamaDouble) -> None:
    (tmp_path / "key").write_text("nd-AbC_123-xyz\n")
    (tmp_path / "gpu.env").write_text(gpu.GpuState(
        present=("amd",), vendor="amd", count=1, driver="loaded", backend="rocm").render())
    code, run = refresh(tmp_path, monkeypatch, ollama_double.host)
    assert code == 0
    text = (tmp_path / "issue").read_text()
    assert "API URL:  https://10.0.2.15:8443/" in text
    assert f"or  https://{socket.gethostname()}:8443/" in text
    assert "API key:  nd-AbC_123-xyz" in text
    assert "Engine:   Ollama 0.0.0-testdouble, models loaded: none" in text
    assert "GPU:      amd x1, driver loaded, backend rocm" in text
    assert stat.S_IMODE(os.stat(tmp_path / "issue").st_mode) == 0o600  # agetty (root) reads it; nobody else
    assert ["agetty", "--reload"] in run.calls


def test_unchanged_content_is_not_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key").write_text("nd-k")
    refresh(tmp_path, monkeypatch, dead_host())
    before = os.stat(tmp_path / "issue").st_ino
    _, run = refresh(tmp_path, monkeypatch, dead_host())
    assert os.stat(tmp_path / "issue").st_ino == before
    assert ["agetty", "--reload"] not in run.calls  # no needless redraw every minute


def test_before_first_boot_and_without_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _ = refresh(tmp_path, monkeypatch, dead_host(), FakeRunner({("ip",): (1, "", "")}))
    assert code == 0
    text = (tmp_path / "issue").read_text()
    assert "API key:  not created yet" in text
    assert "Engine:   not answering yet" in text
    assert "GPU:      not detected yet" in text
    assert f"API URL:  https://{socket.gethostname()}:8443/" in text


def test_text_is_shown_literally_by_getty() -> None:
    text = issue.render_issue("https://[fd00::2]:8443/", "https://h:8443/", "nd-a\\b", "e", "g")
    assert "nd-a\\\\b" in text  # agetty would otherwise treat \b as an escape
    assert text.startswith("NeuralDrive LLM appliance on \\S{PRETTY_NAME} - \\n (\\l)\n")


def test_program_prints_with_dash(tmp_path: Path) -> None:
    result = subprocess.run(
        [*program("usr/lib/neuraldrive/issue-refresh"), "--output", "-", "--key-file",
         str(tmp_path / "none"), "--gpu-env", str(tmp_path / "none")],
        env=clean_env(OLLAMA_HOST=dead_host()), capture_output=True, text=True, timeout=30,
        check=False)
    assert result.returncode == 0, result.stderr
    assert "API URL:  https://" in result.stdout
