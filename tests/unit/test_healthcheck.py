"""healthcheck: engine answers, VRAM and disk thresholds, and the restart of a hung engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import FakeRunner, clean_env, program
from tests.fixtures.healthcheck import NVIDIA, Usage, check, common, dead_host, gpu, gpu_env, health, stocked


@pytest.fixture
def ollama_double(ollama_double: OllamaDouble) -> OllamaDouble:
    return stocked(ollama_double)



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
