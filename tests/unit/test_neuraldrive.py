"""neuraldrive (the admin command) and the seed's short commands, against the Ollama double."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import FakeRunner, clean_env, lib, program
from tests.fixtures.neuraldrive import GIB, context, dead_host

admin = lib("neuraldrive")
common = lib("common")
gpu = lib("gpu")
ollama = lib("ollama")

def loaded_names(double: OllamaDouble) -> list[str]:
    return [ollama.entry_name(m) for m in ollama.Client(double.host).ps()]


def test_load_keeps_the_model_loaded(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    ollama_double.add_model("llama3.2", size=2 * GIB)
    ctx, out, _ = context(tmp_path, ollama_double.host)
    assert admin.main(["load", "llama3.2"], ctx) == 0
    assert "loaded llama3.2 (2.0 GiB" in out.getvalue()
    (entry,) = ollama.Client(ollama_double.host).ps()
    assert int(entry["expires_at"][:4]) > 2100  # keep_alive -1 (sent as the integer -1)


def test_unload_returns_only_once_the_model_is_gone(tmp_path: Path,
                                                   ollama_double: OllamaDouble) -> None:
    ollama_double.add_model("llama3.2")
    ollama_double.add_model("qwen3:8b")
    client = ollama.Client(ollama_double.host)
    client.load("llama3.2")
    client.load("qwen3:8b")
    ctx, out, _ = context(tmp_path, ollama_double.host)
    assert admin.main(["unload", "llama3.2"], ctx) == 0
    assert loaded_names(ollama_double) == ["qwen3:8b"]  # no waiting on our side: already gone
    assert "unloaded llama3.2" in out.getvalue()
    assert admin.main(["unload", "--all"], ctx) == 0
    assert loaded_names(ollama_double) == []


def test_unload_needs_a_target(tmp_path: Path, ollama_double: OllamaDouble,
                               capsys: pytest.CaptureFixture[str]) -> None:
    ctx, out, _ = context(tmp_path, ollama_double.host)
    assert admin.main(["unload"], ctx) == 2
    assert "name the models to unload, or give --all" in capsys.readouterr().err
    assert admin.main(["unload", "not-loaded"], ctx) == 0
    assert "not-loaded is not loaded" in out.getvalue()


def test_unload_that_never_finishes_is_an_error(tmp_path: Path, ollama_double: OllamaDouble,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ollama_double.add_model("big")
    ollama.Client(ollama_double.host).load("big")
    monkeypatch.setattr(ollama.Client, "request_unload", lambda self, model: None)
    ctx, _, _ = context(tmp_path, ollama_double.host, unload_wait=0.3)
    assert admin.main(["unload", "big"], ctx) == 1
    assert "still loaded after 0.3 s: big" in capsys.readouterr().err


def test_models_lists_disk_and_loaded(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    ollama_double.add_model("llama3.2", size=2 * GIB)
    ollama_double.add_model("qwen3:8b", size=5 * GIB)
    ollama.Client(ollama_double.host).load("qwen3:8b")
    ctx, out, _ = context(tmp_path, ollama_double.host)
    assert admin.main(["models"], ctx) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "LOADED"]
    assert lines[1].split()[:3] == ["llama3.2:latest", "2.0", "GiB"]
    assert lines[2].startswith("qwen3:8b") and "5.0 GiB" in lines[2] and lines[2].endswith("RAM")


def test_status(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    ollama_double.add_model("llama3.2", size=GIB)
    ollama.Client(ollama_double.host).load("llama3.2")
    (tmp_path / "gpu.env").write_text(gpu.GpuState(
        present=("nvidia", "intel"), vendor="nvidia", count=1, devices=("0000:01:00.0:10de:25a2",),
        driver="loaded", backend="cuda").render())
    ctx, out, run = context(tmp_path, ollama_double.host)
    assert admin.main(["status"], ctx) == 0
    text = out.getvalue()
    assert "API       https://192.168.1.20:8443/  (also https://" in text
    assert "GPU       nvidia x1, driver loaded, backend cuda (0000:01:00.0:10de:25a2)" in text
    assert "neuraldrive-ollama.service" in text and "neuraldrive-healthcheck.timer" in text
    assert "@.service" not in text  # templates have no state of their own
    assert "Engine    Ollama 0.0.0-testdouble" in text
    assert "llama3.2:latest" in text and "kept loaded" in text
    assert ["systemctl", "is-active", "neuraldrive-gpu-detect.service",
            "neuraldrive-ollama.service", "neuraldrive-healthcheck.timer"] in run.calls


def test_status_without_systemd_bus_or_gpu_env(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    run = FakeRunner({("systemctl",): (1, "", "Failed to connect to bus: No such file or directory"),
                      ("ip",): (1, "", "")})
    ctx, out, _ = context(tmp_path, ollama_double.host, run=run)
    assert admin.main(["status"], ctx) == 0
    text = out.getvalue()
    assert "Services  unknown (systemctl: Failed to connect to bus" in text
    assert "GPU       unknown (no " in text
    assert f"API       https://{socket.gethostname()}:8443/" in text


def test_engine_down_is_one_line_and_exit_1(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ctx, out, _ = context(tmp_path, dead_host())
    for command in (["models"], ["load", "x"], ["unload", "--all"], ["status"]):
        assert admin.main(command, ctx) == 1
        err = capsys.readouterr().err
        assert err.startswith("neuraldrive: engine not answering at http://127.0.0.1:")
        assert len(err.splitlines()) == 1
    assert "Engine    not answering" in out.getvalue()  # status still shows the rest


def test_unknown_model_is_the_engines_message(tmp_path: Path, ollama_double: OllamaDouble,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ctx, _, _ = context(tmp_path, ollama_double.host)
    assert admin.main(["load", "nope"], ctx) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_health_reports_without_restarting(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    ollama_double.add_model("tiny")  # an empty store is a warning (exit 3)
    ctx, _, run = context(tmp_path, ollama_double.host)
    assert admin.main(["health"], ctx) == 0
    ctx, _, run = context(tmp_path, dead_host())
    assert admin.main(["health"], ctx) == 1
    assert not [c for c in run.calls if c[:2] == ["systemctl", "restart"]]


def run_cli(name: str, *args: str, host: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*program(f"usr/bin/{name}"), *args], env=clean_env(OLLAMA_HOST=host),
                          capture_output=True, text=True, timeout=30, check=False)


def test_short_commands(ollama_double: OllamaDouble) -> None:
    ollama_double.add_model("llama3.2")
    ollama_double.add_model("qwen3:8b")
    client = ollama.Client(ollama_double.host)
    client.load("llama3.2")
    client.load("qwen3:8b")
    status = run_cli("ollama-status", host=ollama_double.host)
    assert status.returncode == 0, status.stderr
    assert sorted(m["name"] for m in json.loads(status.stdout)["models"]) == [
        "llama3.2:latest", "qwen3:8b"]
    models = run_cli("ollama-models", host=ollama_double.host)
    assert models.returncode == 0 and "qwen3:8b" in models.stdout
    one = run_cli("ollama-unload", "qwen3:8b", host=ollama_double.host)
    assert one.returncode == 0, one.stderr
    assert loaded_names(ollama_double) == ["llama3.2:latest"]
    rest = run_cli("ollama-unload", host=ollama_double.host)  # no name: everything
    assert rest.returncode == 0, rest.stderr
    assert loaded_names(ollama_double) == []


@pytest.mark.parametrize("name", ["neuraldrive", "ollama-status", "ollama-models", "ollama-unload"])
def test_engine_down_from_the_shell(name: str) -> None:
    args = ["models"] if name == "neuraldrive" else []
    result = run_cli(name, *args, host=dead_host())
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "engine not answering" in result.stderr


@pytest.mark.parametrize("argv", [["neuraldrive", "--help"], ["neuraldrive", "unload", "--help"],
                                  ["neuraldrive", "key", "--help"], ["ollama-status", "--help"],
                                  ["ollama-models", "--help"], ["ollama-unload", "--help"]])
def test_help(argv: list[str]) -> None:
    result = run_cli(argv[0], *argv[1:], host="127.0.0.1:1")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: ")


def test_instance_option_talks_to_that_instance(tmp_path: Path, ollama_double: OllamaDouble,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`neuraldrive -i NAME ...`: the instance's file (and its persistent override) gives the address."""
    instances = lib("instances")
    etc, override = tmp_path / "instances", tmp_path / "config"
    etc.mkdir()
    override.mkdir()
    (etc / "gpu1.conf").write_text("OLLAMA_HOST=127.0.0.1:9\nOLLAMA_MODELS=/m\n")
    (override / "ollama@gpu1.conf").write_text(f"OLLAMA_HOST={ollama_double.host}\n")
    (etc / "gpu0.conf").write_text(f"OLLAMA_HOST={dead_host()}\n")
    monkeypatch.setattr(instances, "INSTANCES_DIR", str(etc))
    monkeypatch.setattr(instances, "OVERRIDE_DIR", str(override))
    ollama_double.add_model("tiny")
    ctx, _, _ = context(tmp_path, dead_host())  # the main engine is down
    assert admin.main(["-i", "gpu1", "load", "tiny"], ctx) == 0
    assert [m["name"] for m in ollama.Client(ollama_double.host).ps()] == ["tiny:latest"]
    assert admin.main(["load", "tiny"], ctx) == 1  # without -i: the main engine
    capsys.readouterr()
    assert admin.main(["-i", "gpu9", "models"], ctx) == 2
    assert capsys.readouterr().err == "neuraldrive: no engine instance 'gpu9' (instances: gpu0, gpu1)\n"


def test_status_lists_every_instance(tmp_path: Path, ollama_double: OllamaDouble,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    instances = lib("instances")
    etc = tmp_path / "instances"
    etc.mkdir()
    (etc / "gpu0.conf").write_text(f"OLLAMA_HOST={ollama_double.host}\n")
    (etc / "gpu1.conf").write_text(f"OLLAMA_HOST={dead_host()}\n")
    monkeypatch.setattr(instances, "INSTANCES_DIR", str(etc))
    monkeypatch.setattr(instances, "OVERRIDE_DIR", str(tmp_path / "none"))
    ollama_double.add_model("tiny")
    ollama.Client(ollama_double.host).load("tiny")
    run = FakeRunner({("systemctl", "is-active", "neuraldrive-ollama@gpu0.service"): (0, "active\n", ""),
                      ("systemctl", "is-active", "neuraldrive-ollama@gpu1.service"): (3, "failed\n", "")})
    gpu0, gpu1 = instances.collect(common.Settings({}), run)
    assert (gpu0.name, gpu0.unit_state, gpu0.health, gpu0.engine.state) == ("gpu0", "active", "ok", "running")
    assert [m.name for m in gpu0.engine.loaded] == ["tiny:latest"] and gpu0.url == f"http://{ollama_double.host}"
    assert (gpu1.unit_state, gpu1.health, gpu1.engine.state) == ("failed", "error", "down")
    ctx, out, _ = context(tmp_path, ollama_double.host, run=run)
    assert admin.main(["status", "--json"], ctx) == 0
    shown = json.loads(out.getvalue())
    assert [(i["name"], i["health"], [m["name"] for m in i["engine"]["loaded"]]) for i in shown["instances"]] == [
        ("gpu0", "ok", ["tiny:latest"]), ("gpu1", "error", [])]
    assert "error: instance gpu1: engine not answering" in " ".join(shown["health_findings"])
    ctx, out, _ = context(tmp_path, ollama_double.host, run=run)
    admin.main(["status"], ctx)
    lines = out.getvalue().splitlines()
    assert any(line.split()[:3] == ["Instances", "gpu0", "active"] and line.endswith("tiny:latest") for line in lines)
    assert any(line.split()[:2] == ["gpu1", "failed"] and "not answering" in line for line in lines)
    assert "Instances gpu0" in out.getvalue()
