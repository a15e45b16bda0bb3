"""Start-up behaviour of the Ollama double's `serve` (keypair, env, libraries, runners, pruning)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from builder.proof.ollama_double import SCRIPT
from tests.fixtures.ollama_double import call, load_script, ps_names, wait_until_unloaded


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_keypair_is_real_and_kept(ollama_double: Any, tmp_path: Path) -> None:
    key = tmp_path / "home" / ".ollama" / "id_ed25519"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    pub = (tmp_path / "home" / ".ollama" / "id_ed25519.pub").read_text()
    assert pub.startswith("ssh-ed25519 AAAA") and pub.endswith("\n") and len(pub.split()) == 2
    if shutil.which("ssh-keygen"):
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == pub.split()


def test_unwritable_home_exits_1_and_listens_nowhere(tmp_path: Path) -> None:
    port = _port()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/proc/nd-home", "OLLAMA_HOST": f"127.0.0.1:{port}",
           "OLLAMA_MODELS": str(tmp_path)}
    out = subprocess.run([sys.executable, str(SCRIPT), "serve"], env=env, capture_output=True, text=True,
                         timeout=20, check=False)
    assert out.returncode == 1
    assert out.stderr == "Error: could not create directory mkdir /proc/nd-home: no such file or directory\n"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(("value", "expected"), [
    ("", ("http", "127.0.0.1", 11434)), ("0.0.0.0", ("http", "0.0.0.0", 11434)),
    (":1234", ("http", "", 1234)), ("example.com:99", ("http", "example.com", 99)),
    ("http://h", ("http", "h", 80)), ("https://h", ("https", "h", 443)), ("[::1]:7", ("http", "::1", 7)),
    ("[::1]", ("http", "::1", 11434)), ("h:99999", ("http", "h", 11434)), ('"1.2.3.4:5"', ("http", "1.2.3.4", 5)),
])
def test_ollama_host_forms(value: str, expected: tuple[str, str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", value)
    url = load_script("envconfig").host()
    assert (url.scheme, url.host, url.port) == expected


@pytest.mark.parametrize(("value", "seconds"), [("", 300), ("10m", 600), ("30", 30), ("-1", None),
                                                ("-5m", None), ("junk", 300), ("0", 0)])
def test_keep_alive_env(value: str, seconds: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", value)
    forever = load_script().FOREVER_NS
    assert load_script("envconfig").keep_alive() == (forever if seconds is None else seconds * 10**9)


def test_bad_uint_warns_and_defaults(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "two")
    assert load_script("envconfig").uint("OLLAMA_NUM_PARALLEL", 1) == 1
    assert 'msg="invalid environment variable, using default" key=OLLAMA_NUM_PARALLEL' in capsys.readouterr().err


def test_runner_child_lives_while_loaded(ollama_double: Any) -> None:
    ollama_double.add_model("tiny")
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": -1})
    children = subprocess.run(["pgrep", "-f", "llama-server --model " + str(ollama_double.models_dir)],
                              capture_output=True, text=True, check=False).stdout.split()
    assert len(children) == 1
    pid = int(children[0])
    assert ps_names(ollama_double.url) == ["tiny:latest"]
    call("POST", ollama_double.url + "/api/generate", {"model": "tiny", "keep_alive": 0})
    wait_until_unloaded(ollama_double.url, "tiny:latest")
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_backends_found_relative_to_the_executable_and_prune(tmp_path: Path) -> None:
    root = tmp_path / "usr"
    shutil.copytree(SCRIPT.parent / "lib", root / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "bin").mkdir()
    shutil.copy2(SCRIPT, root / "bin" / "ollama")
    for backend in ("cuda_v12", "vulkan"):
        (root / "lib" / "ollama" / backend).mkdir()
        (root / "lib" / "ollama" / backend / f"libggml-{backend}.so").write_bytes(b"")
    (tmp_path / "link").symlink_to(root / "bin" / "ollama")
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    old = models / "blobs" / ("sha256-" + "a" * 64)
    old.write_bytes(b"unused")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = models / "blobs" / ("sha256-" + "b" * 64)
    fresh.write_bytes(b"inside the grace period")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OLLAMA_MODELS": str(models),
           "OLLAMA_HOST": f"127.0.0.1:{_port()}", "OLLAMA_VULKAN": "0"}
    proc = subprocess.Popen([str(tmp_path / "link"), "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        while "vram-based default context" not in (line := proc.stderr.readline()):
            assert line, "serve exited early: " + "".join(lines)
            lines.append(line)
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=10)[1]
        assert proc.returncode == 0, rest
    log = "".join(lines)
    assert "library=cuda_v12" in log and "vulkan" not in log.split("discovering available GPUs")[1]
    assert 'msg="inference compute" id=cpu library=cpu' in log
    assert not old.exists() and fresh.exists()
