"""The status function: one value from recorded engine answers, gpu.env, GPU tools, the clock and the disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fixtures.gpu import FakeRunner, lib

status = lib("status")
gpu = lib("gpu")
ollama = lib("ollama")

ENGINE = Path(__file__).resolve().parents[1] / "fixtures" / "engine"


class RecordedClient(ollama.Client):  # type: ignore[misc]
    """Answers GET requests with the recorded files; `down` makes every call fail like a dead engine."""

    def __init__(self, down: bool = False) -> None:
        super().__init__("127.0.0.1:9")
        self.down = down

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        if self.down:
            raise ollama.EngineDownError(f"engine not answering at {self.url} (Connection refused)")
        return json.loads((ENGINE / f"{path.rsplit('/', 1)[-1]}.json").read_text())


def nvidia_env(tmp_path: Path) -> Path:
    env = tmp_path / "gpu.env"
    env.write_text(gpu.GpuState(present=("nvidia",), vendor="nvidia", count=1, devices=("0000:01:00.0:10de:2684",),
                                driver="loaded", backend="cuda").render())
    return env


def sources(tmp_path: Path, gpu_env: Path, run: Any, **kw: Any) -> Any:
    return status.Sources(kw.pop("client", RecordedClient()), gpu_env, tmp_path, run,
                          clock=lambda: 1_700_000_000.0, boot_clock=lambda: 93_780.0, **kw)


NVIDIA_SMI = {("nvidia-smi", "--query-gpu=index,name,memory.used,memory.total"):
              (0, "0, NVIDIA GeForce RTX 4090, 9800, 24564\n", ""),
              ("nvidia-smi", "--query-gpu=memory.used,memory.total"): (0, "9800, 24564\n", "")}


def test_collect_from_recorded_answers(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, nvidia_env(tmp_path), FakeRunner(dict(NVIDIA_SMI))))
    assert (state.engine_state, state.engine_version, state.gpu_backend) == ("running", "0.32.7", "cuda")
    assert state.gpus == [status.Gpu(0, "NVIDIA GeForce RTX 4090", 9800 * 2**20, 24564 * 2**20)]
    mistral, qwen = state.loaded
    assert (mistral.name, mistral.size, mistral.vram_share, mistral.quantization) == (
        "mistral:latest", 5137025024, 1.0, "Q4_0")
    assert mistral.expires_at == "2024-06-04T14:38:31.83753-07:00"
    assert qwen.expires_at is None  # keep_alive -1: centuries away
    assert qwen.vram_share == 0.75  # partly offloaded to the CPU
    assert state.vram_used == 9800 * 2**20  # what the GPU says, not the models' sum
    assert state.health == "ok" and state.health_findings[0] == "ok: engine: version 0.32.7"
    assert any("gpu 0: VRAM 39% used" in f for f in state.health_findings)
    assert state.uptime_s == 93_780.0 and state.disk_total and state.disk_free is not None
    data = json.loads(json.dumps(state.to_dict()))  # what the page reads
    assert data["loaded"][1]["name"] == "qwen3:8b" and data["vram_used"] == 9800 * 2**20
    assert data["time"] == 1_700_000_000.0


def test_engine_down_is_reported_not_raised(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, tmp_path / "missing.env", FakeRunner({}),
                                   client=RecordedClient(down=True)))
    assert state.engine_state == "down" and "Connection refused" in (state.engine_error or "")
    assert state.health == "error" and state.loaded == [] and state.gpus == []
    assert state.gpu_backend == "unknown" and state.vram_used is None
    text = status.render_text(state, "http://127.0.0.1:11434")
    assert "Engine    not answering at http://127.0.0.1:11434" in text
    assert "Health    error" in text


def test_amd_vram_from_sysfs_and_models_share(tmp_path: Path) -> None:
    card = tmp_path / "drm" / "card1" / "device"
    card.mkdir(parents=True)
    (card / "mem_info_vram_total").write_text("17163091968\n")
    (card / "mem_info_vram_used").write_text("5368709120\n")
    env = tmp_path / "gpu.env"
    env.write_text(gpu.GpuState(present=("amd",), vendor="amd", count=1, driver="loaded", backend="vulkan").render())
    state = status.collect(sources(tmp_path, env, FakeRunner({}), drm=tmp_path / "drm"))
    assert state.gpus == [status.Gpu(0, "card1", 5368709120, 17163091968)]
    # No tool says anything about an Intel GPU: VRAM used is what the loaded models hold there.
    env.write_text(gpu.GpuState(present=("intel",), vendor="intel", count=1, driver="loaded",
                                backend="vulkan").render())
    state = status.collect(sources(tmp_path, env, FakeRunner({}), drm=tmp_path / "drm"))
    assert state.gpus == [] and state.vram_used == 5137025024 + 4800000000


def test_render_text(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, nvidia_env(tmp_path), FakeRunner(dict(NVIDIA_SMI))))
    lines = status.render_text(state, "http://127.0.0.1:11434")
    assert lines[0] == "GPU       nvidia x1, driver loaded, backend cuda (0000:01:00.0:10de:2684)"
    assert lines[1] == "          gpu 0 NVIDIA GeForce RTX 4090: VRAM 9.6 GiB of 24.0 GiB"
    assert "Engine    Ollama 0.32.7 at http://127.0.0.1:11434" in lines
    assert any(line.startswith("Loaded    mistral:latest") and "(100%)" in line and "until 2024-06-04 14:38"
               in line for line in lines)
    assert any("qwen3:8b" in line and "(75%)" in line and "kept loaded" in line for line in lines)
    assert "Uptime    1 d 2 h 03 min" in lines
    assert any(line.startswith("Disk      ") and "free of" in line for line in lines)


def test_unreadable_nvidia_smi_leaves_gpus_unknown(tmp_path: Path) -> None:
    run = FakeRunner({("nvidia-smi",): (9, "", "NVIDIA-SMI has failed")})
    state = status.collect(sources(tmp_path, nvidia_env(tmp_path), run))
    assert state.gpus == [] and state.health in ("warning", "error")  # the health check decides how bad
    assert state.vram_used == 5137025024 + 4800000000
