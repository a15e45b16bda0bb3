"""healthcheck: engine answers, VRAM and disk thresholds, and the restart of a hung engine."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import FakeRunner, clean_env, lib, program

common = lib("common")
gpu = lib("gpu")
health = lib("healthcheck")

Usage = namedtuple("Usage", "total used free")
NVIDIA = gpu.GpuState(present=("nvidia",), vendor="nvidia", count=2, driver="loaded", backend="cuda")


@pytest.fixture
def ollama_double(ollama_double: OllamaDouble) -> OllamaDouble:
    """The shared double with one model in its store (an empty store is a warning)."""
    ollama_double.add_model("tiny", size=5000)
    return ollama_double


def dead_host() -> str:
    """An address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def gpu_env(tmp_path: Path, state: object) -> Path:
    path = tmp_path / "gpu.env"
    path.write_text(state.render())  # type: ignore[attr-defined]
    return path


def check(tmp_path: Path, host: str, runner: FakeRunner | None = None, gpu_file: Path | None = None,
          **settings: str) -> tuple[int, FakeRunner]:
    values = {"OLLAMA_HOST": host, "NEURALDRIVE_HEALTH_DISK_WARN_PERCENT": "100", **settings}
    run = runner or FakeRunner()
    code = health.run_checks(common.Settings(values), gpu_file or tmp_path / "no-gpu.env",
                             tmp_path, run, tmp_path / "gpu-restart")
    return code, run


def test_healthy_engine(tmp_path: Path, ollama_double: OllamaDouble,
                        capsys: pytest.CaptureFixture[str]) -> None:
    code, run = check(tmp_path, ollama_double.host)
    assert code == 0
    assert run.calls == []  # no GPU to query, nothing to restart
    out = capsys.readouterr().out
    assert "ok: engine: version 0.0.0-testdouble answered in" in out
    assert "ok: disk:" in out


def test_engine_down_fails_without_touching_anything(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, run = check(tmp_path, dead_host())
    assert code == health.EXIT_FAILED
    assert run.calls == []  # restarting is the recovery unit's job
    assert "error: engine: no valid answer from /api/version within 10 s" in capsys.readouterr().out


def test_vram_nearly_full_is_a_warning(tmp_path: Path, ollama_double: OllamaDouble,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    smi = FakeRunner({tuple(health.NVIDIA_QUERY): (0, "23900, 24564\n1200, 24564\n", "")})
    code, run = check(tmp_path, ollama_double.host, smi, gpu_env(tmp_path, NVIDIA))
    assert code == 0  # 23900 of 24564 MiB is 97 %: below the default 98
    assert run.calls == [health.NVIDIA_QUERY]
    capsys.readouterr()
    code, _ = check(tmp_path, ollama_double.host, smi, gpu_env(tmp_path, NVIDIA),
                    NEURALDRIVE_HEALTH_VRAM_WARN_PERCENT="95")
    out = capsys.readouterr().out
    assert code == health.EXIT_WARNING
    assert "warning: gpu 0: VRAM 97% used (23900 of 24564 MiB; warning at 95%)" in out
    assert "ok: gpu 1: VRAM 4% used" in out


def test_vram_fine(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    smi = FakeRunner({tuple(health.NVIDIA_QUERY): (0, "1200, 24564\n", "")})
    code, _ = check(tmp_path, ollama_double.host, smi, gpu_env(tmp_path, NVIDIA))
    assert code == 0


def test_nvidia_smi_failure_is_reported(tmp_path: Path, ollama_double: OllamaDouble,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    smi = FakeRunner({("nvidia-smi",): (15, "Unable to determine the device handle for GPU0000:"
                                            "01:00.0: GPU is lost.  Reboot the system\n", "")})
    code, _ = check(tmp_path, ollama_double.host, smi, gpu_env(tmp_path, NVIDIA))
    assert code == health.EXIT_GPU  # a restart of the engine, once
    assert ("error: gpu: the NVIDIA driver does not answer (nvidia-smi failed: Unable to determine"
            in capsys.readouterr().out)
    (tmp_path / "gpu-restart").write_text("1700000000\n")  # the recovery unit restarted it already
    code, _ = check(tmp_path, ollama_double.host, smi, gpu_env(tmp_path, NVIDIA))
    assert code == health.EXIT_GPU_AGAIN
    assert "not again: check the driver, or reboot" in capsys.readouterr().out


@pytest.mark.parametrize("state", [
    gpu.GpuState(),
    gpu.GpuState(present=("amd",), vendor="amd", count=1, driver="loaded", backend="rocm"),
    gpu.GpuState(present=("nvidia",), vendor="nvidia", count=1, driver="missing"),
])
def test_vram_is_only_queried_on_a_working_nvidia(tmp_path: Path, ollama_double: OllamaDouble,
                                                  state: object) -> None:
    _, run = check(tmp_path, ollama_double.host, gpu_file=gpu_env(tmp_path, state))
    assert run.calls == []


def test_full_disk_is_a_warning(tmp_path: Path, ollama_double: OllamaDouble,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(health.shutil, "disk_usage", lambda _p: Usage(100 * 2**20, 93 * 2**20,
                                                                        7 * 2**20))
    code, _ = check(tmp_path, ollama_double.host, NEURALDRIVE_HEALTH_DISK_WARN_PERCENT="90")
    assert code == health.EXIT_WARNING
    assert "7 MiB free; warning at 90%" in capsys.readouterr().out


def test_bad_setting(tmp_path: Path) -> None:
    with pytest.raises(common.ConfigError, match="NEURALDRIVE_HEALTH_API_TIMEOUT='soon'"):
        check(tmp_path, dead_host(), NEURALDRIVE_HEALTH_API_TIMEOUT="soon")


@pytest.mark.parametrize(("state", "expected"), [
    ("active", [["systemctl", "reset-failed", "neuraldrive-ollama.service"],
                ["systemctl", "restart", "--no-block", "neuraldrive-ollama.service"]]),
    ("failed", [["systemctl", "reset-failed", "neuraldrive-ollama.service"],
                ["systemctl", "restart", "--no-block", "neuraldrive-ollama.service"]]),
    # stopped: bring back (its start limit may be used up, hence reset-failed here too)
    ("inactive", [["systemctl", "reset-failed", "neuraldrive-ollama.service"],
                  ["systemctl", "restart", "--no-block", "neuraldrive-ollama.service"]]),
    ("activating", []),  # still starting: give it time
    ("deactivating", []),  # mid-stop: the next run will see the result
])
def test_recovery_restarts_an_engine_that_is_not_starting_or_stopping(state: str,
                                                                 expected: list[list[str]]) -> None:
    run = FakeRunner({("systemctl", "is-active"): (0 if state == "active" else 3, state + "\n", "")})
    code = health.main(["--restart-engine"], run)
    assert run.calls[0] == ["systemctl", "is-active", "neuraldrive-ollama.service"]
    assert run.calls[1:] == expected
    assert code == (0 if expected else health.EXIT_WARNING)


@pytest.mark.parametrize(("monitor", "restarts"), [
    ({"MONITOR_EXIT_CODE": "exited", "MONITOR_EXIT_STATUS": "1", "MONITOR_SERVICE_RESULT": "exit-code"}, True),
    ({"MONITOR_EXIT_CODE": "killed", "MONITOR_EXIT_STATUS": "TERM", "MONITOR_SERVICE_RESULT": "timeout"}, True),
    ({"MONITOR_EXIT_CODE": "exited", "MONITOR_EXIT_STATUS": "2", "MONITOR_SERVICE_RESULT": "exit-code"}, False),
    ({"MONITOR_EXIT_CODE": "killed", "MONITOR_EXIT_STATUS": "SEGV", "MONITOR_SERVICE_RESULT": "signal"}, False),
])
def test_recovery_restarts_only_when_the_engine_failed_the_check(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], monitor: dict[str, str],
        restarts: bool) -> None:
    for key, value in monitor.items():
        monkeypatch.setenv(key, value)
    run = FakeRunner({("systemctl", "is-active"): (0, "active\n", "")})
    code = health.main(["--restart-engine"], run)
    assert bool(run.commands("systemctl")) == restarts
    if not restarts:
        assert code == health.EXIT_FAILED
        assert "left alone" in capsys.readouterr().out


def test_a_typo_in_the_settings_never_restarts_the_engine(tmp_path: Path) -> None:
    """End to end through the programs: the check exits 2 on a bad setting; the recovery unit, handed
    that result by systemd, leaves the engine alone."""
    check = subprocess.run([*program("usr/lib/neuraldrive/healthcheck"), "--state-dir", str(tmp_path)],
                           env=clean_env(NEURALDRIVE_HEALTH_API_TIMEOUT="5s", OLLAMA_HOST="127.0.0.1:9"),
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == health.EXIT_USAGE, check.stderr
    assert "NEURALDRIVE_HEALTH_API_TIMEOUT" in check.stderr
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    (bindir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho active\n')
    (bindir / "systemctl").chmod(0o755)
    recover = subprocess.run(
        [*program("usr/lib/neuraldrive/healthcheck"), "--restart-engine"],
        env=clean_env(PATH=f"{bindir}:/usr/bin:/bin", MONITOR_EXIT_CODE="exited",
                      MONITOR_EXIT_STATUS=str(check.returncode), MONITOR_SERVICE_RESULT="exit-code"),
        capture_output=True, text=True, timeout=30, check=False)
    assert recover.returncode == health.EXIT_FAILED
    assert not calls.exists(), calls.read_text()


def test_recovery_failure_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    run = FakeRunner({("systemctl", "is-active"): (0, "active\n", ""),
                      ("systemctl", "restart"): (1, "", "Failed to restart: Access denied\n")})
    assert health.main(["--restart-engine"], run) == health.EXIT_FAILED
    assert "restarting neuraldrive-ollama.service failed: Failed to restart: Access denied" in (
        capsys.readouterr().out)


def test_program_against_a_dead_engine(tmp_path: Path) -> None:
    result = subprocess.run(
        [*program("usr/lib/neuraldrive/healthcheck"), "--gpu-env", str(tmp_path / "none"),
         "--state-dir", str(tmp_path)],
        env=clean_env(OLLAMA_HOST=dead_host(), NEURALDRIVE_HEALTH_API_TIMEOUT="2",
                      NEURALDRIVE_HEALTH_DISK_WARN_PERCENT="100"),
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: engine: no valid answer from /api/version within 2 s" in result.stdout


def test_disk_check_uses_the_real_filesystem(tmp_path: Path) -> None:
    finding = health.check_disk(tmp_path, 100)
    usage = shutil.disk_usage(tmp_path)
    assert finding.level == ("warning" if usage.free == 0 else "ok")
    assert str(tmp_path) in finding.message


# ---- seed 004: empty store, CPU fallback on a GPU image, one restart per boot ----------------

AMD = gpu.GpuState(present=("amd",), vendor="amd", count=1, driver="loaded", backend="vulkan")
# /api/ps of Ollama v0.32.7 for a model it placed on the CPU, and for one fully on the GPU.
PS_ON_CPU = [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 3_338_801_804,
              "digest": "a80c4f17acd5", "expires_at": "2026-02-19T12:05:00.1+00:00", "size_vram": 0,
              "context_length": 4096}]
PS_ON_GPU = [{**PS_ON_CPU[0], "size_vram": 3_338_801_804}]


class Recorded:
    """A client answering /api/ps with a recorded answer."""

    def __init__(self, models: list[dict[str, object]]) -> None:
        self.models = models

    def ps(self, timeout: float | None = None) -> list[dict[str, object]]:
        return self.models


def test_empty_model_store_is_a_warning(tmp_path: Path, ollama_double: OllamaDouble,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = check(tmp_path, ollama_double.host)
    assert code == 0 and "ok: models: 1 in the store" in capsys.readouterr().out
    shutil.rmtree(ollama_double.models_dir / "manifests")
    code, _ = check(tmp_path, ollama_double.host)
    assert code == health.EXIT_WARNING
    assert "warning: models: the model store is empty" in capsys.readouterr().out


@pytest.mark.parametrize(("state", "models", "fault"), [
    (AMD, PS_ON_CPU, True), (NVIDIA, PS_ON_CPU, True), (AMD, PS_ON_GPU, False), (AMD, [], False),
    (gpu.GpuState(), PS_ON_CPU, False),  # a CPU machine: size_vram 0 is normal
    (gpu.GpuState(present=("nvidia",), vendor="nvidia", count=1, driver="missing"), PS_ON_CPU, False),
])
def test_cpu_fallback_on_recorded_answers(tmp_path: Path, state: object, models: list[dict[str, object]],
                                          fault: bool) -> None:
    finding = health.check_gpu_use(Recorded(models), gpu_env(tmp_path, state), 10)
    assert bool(finding and finding.gpu_fault) == fault
    if fault:
        assert finding.level == "error" and "llama3.2:latest loaded with nothing in VRAM" in finding.message


@pytest.mark.double_env(OLLAMA_TESTDOUBLE_CPU_FALLBACK="1")
def test_cpu_fallback_restarts_once_then_reports(tmp_path: Path, ollama_double: OllamaDouble,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on the double reporting size_vram 0: check (exit 4) -> recovery restarts the
    engine and leaves the mark -> check (exit 5) -> recovery leaves the engine alone."""
    ollama_double_client = lib("ollama").Client(ollama_double.host)
    ollama_double_client.load("tiny")
    mark = tmp_path / "gpu-restart"
    code, _ = check(tmp_path, ollama_double.host, gpu_file=gpu_env(tmp_path, AMD))
    assert code == health.EXIT_GPU
    assert "the engine fell back to the CPU although gpu-detect found amd (vulkan)" in capsys.readouterr().out
    monitor = {"MONITOR_EXIT_CODE": "exited", "MONITOR_EXIT_STATUS": str(code)}
    run = FakeRunner({("systemctl", "is-active"): (0, "active\n", "")})
    finding = health.restart_engine(run, monitor, mark, now=lambda: 1_700_000_000)
    assert finding.level == "ok" and mark.read_text() == "1700000000\n"
    assert run.commands("systemctl")[-1] == ["systemctl", "restart", "--no-block", "neuraldrive-ollama.service"]
    code, _ = check(tmp_path, ollama_double.host, gpu_file=gpu_env(tmp_path, AMD))
    assert code == health.EXIT_GPU_AGAIN
    again = FakeRunner({("systemctl", "is-active"): (0, "active\n", "")})
    for status in (str(code), str(health.EXIT_GPU)):  # 5, or a 4 racing the mark: never again
        finding = health.restart_engine(again, {**monitor, "MONITOR_EXIT_STATUS": status}, mark)
        assert finding.level == "error" and "left alone" in finding.message
    assert again.calls == []


def test_gpu_restart_needs_its_mark(tmp_path: Path) -> None:
    run = FakeRunner({("systemctl", "is-active"): (0, "active\n", "")})
    finding = health.restart_engine(run, {"MONITOR_EXIT_CODE": "exited", "MONITOR_EXIT_STATUS": "4"},
                                    tmp_path / "no-dir" / "mark")
    assert finding.level == "error" and "not restarting for a GPU fault" in finding.message
    assert run.calls == []


# ---- engine instances (neuraldrive-healthcheck@NAME) -----------------------------------------

def test_each_instance_has_its_own_mark_and_unit() -> None:
    assert health.mark_for("neuraldrive-ollama.service") == Path("/run/neuraldrive/health-gpu-restart")
    assert health.mark_for("neuraldrive-ollama@gpu1.service") == Path("/run/neuraldrive/health-gpu-restart@gpu1")
    run = FakeRunner({("systemctl", "is-active"): (0, "failed\n", "")})
    code = health.main(["--restart-engine", "--engine-unit", "neuraldrive-ollama@gpu1.service"], run)
    assert code == 0
    assert run.calls == [["systemctl", "is-active", "neuraldrive-ollama@gpu1.service"],
                         ["systemctl", "reset-failed", "neuraldrive-ollama@gpu1.service"],
                         ["systemctl", "restart", "--no-block", "neuraldrive-ollama@gpu1.service"]]


def test_only_engine_units_are_restarted(capsys: pytest.CaptureFixture[str]) -> None:
    run = FakeRunner()
    assert health.main(["--restart-engine", "--engine-unit", "ssh.service"], run) == health.EXIT_USAGE
    assert run.calls == []
    assert capsys.readouterr().err == ("healthcheck: --engine-unit 'ssh.service' is not an engine unit "
                                       "(neuraldrive-ollama[@NAME].service)\n")
