"""The Ollama-API test double as a program: its CLI (version, list, ps, stop), Go durations, `serve` stopping
on SIGTERM, and the release-style archive. Its HTTP API: test_ollama_double_api.py."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from builder.proof.ollama_double import SCRIPT
from builder.proof.ollama_double.package import ARCHIVE_NAME, build_archive
from tests.fixtures.ollama_double import call, load_script, wait_until_unloaded


def run_cli(host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env["OLLAMA_HOST"] = host
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=20)


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
