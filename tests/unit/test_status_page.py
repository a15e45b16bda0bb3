"""status-page: the operator page's status file, written by the unit that may read the GPUs."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from pathlib import Path

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import FakeRunner, lib

page = lib("status_page")
gpu = lib("gpu")
status_gpus = lib("status_gpus")

A100_SMI = (Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "nvidia-smi-a100x4.csv").read_text()


def nvidia_env(tmp_path: Path) -> Path:
    env = tmp_path / "gpu.env"
    env.write_text(gpu.GpuState(present=("nvidia",), vendor="nvidia", count=1, devices=("0000:17:00.0:10de:20f1",),
                                driver="loaded", backend="cuda").render())
    return env


def test_writes_what_status_json_prints_readable_by_the_gateway(tmp_path: Path, ollama_double: OllamaDouble,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit runs with UMask=0077; the gateway (another user) must still read the file."""
    monkeypatch.setenv("OLLAMA_HOST", ollama_double.host)
    ollama_double.add_model("tiny")
    target = tmp_path / "page" / "status.json"
    target.parent.mkdir()
    run = FakeRunner({status_gpus.NVIDIA_QUERY: (0, A100_SMI.splitlines()[0], "")})
    old = os.umask(0o077)
    try:
        assert page.main(["--once", "--output", str(target), "--gpu-env", str(nvidia_env(tmp_path))], run) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    data = json.loads(target.read_text())
    assert data["schema"] == 1 and data["engine_state"] == "running"
    assert data["gpus"] == [{"index": 0, "slot": "0000:17:00.0", "vendor": "nvidia", "name": "NVIDIA A100-PCIE-40GB",
                             "vram_used": 20511 * 2**20, "vram_total": 40960 * 2**20}]
    assert data["vram_used"] == 20511 * 2**20


def test_engine_down_is_written_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    target = tmp_path / "status.json"
    assert page.main(["--once", "--output", str(target), "--gpu-env", str(tmp_path / "none")], FakeRunner()) == 0
    data = json.loads(target.read_text())
    assert (data["engine_state"], data["health"], data["gpus"]) == ("down", "error", [])


def test_unwritable_target_fails_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    assert page.main(["--once", "--output", str(tmp_path / "missing" / "status.json")], FakeRunner()) == 1


def test_bad_interval_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEURALDRIVE_STATUS_INTERVAL", "soon")
    assert page.main(["--once"], FakeRunner()) == 2
    assert capsys.readouterr().err == "status-page: NEURALDRIVE_STATUS_INTERVAL='soon' is not a whole number\n"


def test_loop_rewrites_until_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("NEURALDRIVE_STATUS_INTERVAL", "1")
    target = tmp_path / "status.json"
    times: list[float] = []
    real_write = page.write_status

    def counting(path: Path, src: object) -> bool:
        ok = bool(real_write(path, src))
        times.append(json.loads(path.read_text())["time"])
        if len(times) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the unit's stop
        return ok

    monkeypatch.setattr(page, "write_status", counting)
    assert threading.current_thread() is threading.main_thread()
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert page.main(["--output", str(target)], FakeRunner()) == 0
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert len(times) == 2 and times[1] > times[0]

