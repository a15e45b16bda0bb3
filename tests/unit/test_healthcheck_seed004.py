"""healthcheck, seed 004: an empty model store, a model on the CPU of a GPU image (one engine restart
per boot, then a report), and each engine instance's own mark and unit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import FakeRunner, lib
from tests.fixtures.healthcheck import NVIDIA, check, gpu, gpu_env, health, stocked


@pytest.fixture
def ollama_double(ollama_double: OllamaDouble) -> OllamaDouble:
    return stocked(ollama_double)


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
