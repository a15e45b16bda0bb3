"""The status function: one value from recorded engine answers, gpu.env, GPU tools, the clock and the disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fixtures.gpu import FakeRunner, lib

status = lib("status")
status_gpus = lib("status_gpus")
status_text = lib("status_text")
gpu = lib("gpu")
gpu_detect = lib("gpu_detect")
ollama = lib("ollama")

ENGINE = Path(__file__).resolve().parents[1] / "fixtures" / "engine"
SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
DRM_TREE = SAMPLES / "sysfs-drm-amd-intel" / "class" / "drm"


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


NVIDIA_SMI = {("nvidia-smi", "--query-gpu=index,pci.bus_id,name,memory.used,memory.total"):
              (0, "0, 00000000:01:00.0, NVIDIA GeForce RTX 4090, 9800, 24564\n", ""),
              ("nvidia-smi", "--query-gpu=memory.used,memory.total"): (0, "9800, 24564\n", "")}


def test_collect_from_recorded_answers(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, nvidia_env(tmp_path), FakeRunner(dict(NVIDIA_SMI))))
    assert (state.engine_state, state.engine_version, state.gpu_backend) == ("running", "0.32.7", "cuda")
    assert state.gpus == [status.Gpu(0, "0000:01:00.0", "nvidia", "NVIDIA GeForce RTX 4090", 9800 * 2**20,
                                     24564 * 2**20)]
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
    text = status_text.render_text(state, "http://127.0.0.1:11434")
    assert "Engine    not answering at http://127.0.0.1:11434" in text
    assert "Health    error" in text


def detected_env(tmp_path: Path, lspci: str, loaded: bool = True) -> Path:
    """gpu.env as gpu-detect writes it for a recorded lspci -nn listing."""
    found = gpu.detect(gpu.parse_lspci((SAMPLES / lspci).read_text()), ("nvidia", "amd", "intel"))
    env = tmp_path / "gpu.env"
    backends = {v.name: v.backend for v in gpu.VENDORS}
    drivers = {found.chosen.name: loaded} if found.chosen else {}
    env.write_text(gpu_detect.gpu_state(found, drivers, backends).render())
    return env


def test_each_nvidia_gpu_from_nvidia_smi_by_pci_slot(tmp_path: Path) -> None:
    """Four A100s in gpu.env; nvidia-smi reports three (one without memory figures, one missing)."""
    run = FakeRunner({status_gpus.NVIDIA_QUERY: (0, (SAMPLES / "nvidia-smi-a100x4.csv").read_text(), "")})
    state = status.collect(sources(tmp_path, detected_env(tmp_path, "lspci-nvidia-multi.txt"), run))
    a100, gib40 = "NVIDIA A100-PCIE-40GB", 40960 * 2**20
    assert state.gpus == [status.Gpu(0, "0000:17:00.0", "nvidia", a100, 20511 * 2**20, gib40),
                          status.Gpu(1, "0000:65:00.0", "nvidia", a100, 4 * 2**20, gib40),
                          status.Gpu(2, "0000:b3:00.0", "nvidia", a100, None, None),
                          status.Gpu(3, "0000:ca:00.0", "nvidia", "10de:20f1", None, None)]
    assert state.vram_used == (20511 + 4) * 2**20
    lines = status_text.render_text(state, "http://127.0.0.1:11434")
    assert "          gpu 3 0000:ca:00.0 10de:20f1: VRAM unknown" in lines
    assert f"          gpu 0 0000:17:00.0 {a100}: VRAM 20.0 GiB of 40.0 GiB" in lines


def test_nvidia_driver_missing_lists_the_cards_without_asking(tmp_path: Path) -> None:
    run = FakeRunner({})
    state = status.collect(sources(tmp_path, detected_env(tmp_path, "lspci-nvidia-multi.txt", loaded=False), run))
    assert [(g.slot, g.vram_total) for g in state.gpus] == [
        ("0000:17:00.0", None), ("0000:65:00.0", None), ("0000:b3:00.0", None), ("0000:ca:00.0", None)]
    assert run.commands("nvidia-smi") == []


def test_amd_vram_from_sysfs(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, detected_env(tmp_path, "lspci-amd.txt"), FakeRunner({}),
                                   drm=DRM_TREE))
    assert state.gpus == [status.Gpu(0, "0000:03:00.0", "amd", "1002:744c", 1288490188, 25753026560)]
    assert state.vram_used == 1288490188  # what the card says, not the models' sum
    assert status_gpus.read_sysfs(DRM_TREE).keys() == {"0000:00:02.0", "0000:03:00.0"}  # cards only


def test_intel_igpu_has_a_row_without_vram(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, detected_env(tmp_path, "lspci-intel-igpu.txt"), FakeRunner({}),
                                   drm=DRM_TREE))
    assert state.gpus == [status.Gpu(0, "0000:00:02.0", "intel", "8086:46a6", None, None)]
    # No figure from the driver: VRAM used is what the loaded models hold there.
    assert state.vram_used == 5137025024 + 4800000000
    assert json.loads(json.dumps(state.to_dict()))["gpus"][0]["vram_total"] is None


def test_cpu_machine_has_no_gpu_rows(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, detected_env(tmp_path, "lspci-none-qemu.txt"), FakeRunner({}),
                                   drm=DRM_TREE))
    assert state.gpus == [] and state.gpu_backend == "cpu" and state.vram_used is None


def test_nvidia_smi_names_with_commas_and_short_lines() -> None:
    readings = status_gpus.parse_nvidia_smi("0, 00000000:01:00.0, Tesla, rev 2, 10, 20\ngarbage\n")
    assert readings == {"0000:01:00.0": status_gpus.Reading("Tesla, rev 2", 10 * 2**20, 20 * 2**20)}


def test_render_text(tmp_path: Path) -> None:
    state = status.collect(sources(tmp_path, nvidia_env(tmp_path), FakeRunner(dict(NVIDIA_SMI))))
    lines = status_text.render_text(state, "http://127.0.0.1:11434")
    assert lines[0] == "GPU       nvidia x1, driver loaded, backend cuda (0000:01:00.0:10de:2684)"
    assert lines[1] == "          gpu 0 0000:01:00.0 NVIDIA GeForce RTX 4090: VRAM 9.6 GiB of 24.0 GiB"
    assert "Engine    Ollama 0.32.7 at http://127.0.0.1:11434" in lines
    assert any(line.startswith("Loaded    mistral:latest") and "(100%)" in line and "until 2024-06-04 14:38"
               in line for line in lines)
    assert any("qwen3:8b" in line and "(75%)" in line and "kept loaded" in line for line in lines)
    assert "Uptime    1 d 2 h 03 min" in lines
    assert any(line.startswith("Disk      ") and "free of" in line for line in lines)


def test_unreadable_nvidia_smi_leaves_gpus_unknown(tmp_path: Path) -> None:
    run = FakeRunner({("nvidia-smi",): (9, "", "NVIDIA-SMI has failed")})
    state = status.collect(sources(tmp_path, nvidia_env(tmp_path), run))
    assert [(g.slot, g.name, g.vram_used) for g in state.gpus] == [("0000:01:00.0", "10de:2684", None)]
    assert state.health in ("warning", "error")  # the health check decides how bad
    assert state.vram_used == 5137025024 + 4800000000
