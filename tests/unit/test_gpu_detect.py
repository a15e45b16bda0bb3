"""gpu-detect on recorded machines: which drivers it loads and what it tells the engine."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.gpu import SAMPLES, FakeRunner, clean_env, lib, program

gpu = lib("gpu")
gpu_detect = lib("gpu_detect")

ALL = "nvidia amd intel"
NVIDIA_MODULES = ["modprobe", "-a", "nvidia-current", "nvidia-current-uvm", "nvidia-current-drm"]


def detect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: str, vendors: str = ALL,
           runner: FakeRunner | None = None) -> tuple[int, dict[str, str], FakeRunner]:
    """Run gpu-detect on a recorded lspci sample; returns (exit code, gpu.env, commands)."""
    monkeypatch.setenv("NEURALDRIVE_GPU_VENDORS", vendors)
    run = runner or FakeRunner()
    code = gpu_detect.main(["--root", str(tmp_path), "--lspci-file", str(SAMPLES / sample)], run)
    env_file = tmp_path / "run/neuraldrive/gpu.env"
    values = lib("common").read_env_file(env_file) if env_file.exists() else {}
    return code, values, run


def test_no_gpu_in_a_vm_means_cpu_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-none-qemu.txt")
    assert code == 0
    assert run.commands("modprobe") == []
    assert env["NEURALDRIVE_GPU_VENDOR"] == "none"
    assert env["NEURALDRIVE_GPU_COUNT"] == "0"
    assert env["NEURALDRIVE_GPU_DRIVER"] == "none"
    assert env["NEURALDRIVE_GPU_BACKEND"] == "cpu"
    assert env["NEURALDRIVE_GPU_PRESENT"] == ""  # the Intel host bridge is not a GPU


def test_single_nvidia_loads_debians_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-nvidia-single.txt")
    assert code == 0
    assert run.commands("modprobe") == [NVIDIA_MODULES]
    # Device nodes for the new driver must exist before the engine starts, but not forever.
    assert run.commands("udevadm") == [["udevadm", "settle", "--timeout=10"]]
    assert env == {
        "NEURALDRIVE_GPU_PRESENT": "nvidia",
        "NEURALDRIVE_GPU_VENDOR": "nvidia",
        "NEURALDRIVE_GPU_COUNT": "1",
        "NEURALDRIVE_GPU_DEVICES": "0000:01:00.0:10de:2204",  # not the HDMI audio function
        "NEURALDRIVE_GPU_DRIVER": "loaded",
        "NEURALDRIVE_GPU_BACKEND": "cuda",
        "OLLAMA_VULKAN": "0",
    }


def test_four_nvidia_compute_cards_next_to_a_bmc_vga(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-nvidia-multi.txt")
    assert code == 0
    assert run.commands("modprobe") == [NVIDIA_MODULES]
    assert env["NEURALDRIVE_GPU_COUNT"] == "4"
    assert env["NEURALDRIVE_GPU_DEVICES"].split() == [
        "0000:17:00.0:10de:20f1", "0000:65:00.0:10de:20f1",
        "0000:b3:00.0:10de:20f1", "0000:ca:00.0:10de:20f1"]
    assert env["NEURALDRIVE_GPU_BACKEND"] == "cuda"


def test_amd_uses_amdgpu_and_vulkan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-amd.txt")
    assert code == 0
    assert run.commands("modprobe") == [["modprobe", "-a", "amdgpu"]]
    assert env["NEURALDRIVE_GPU_VENDOR"] == "amd"
    assert env["NEURALDRIVE_GPU_COUNT"] == "1"  # PCIe switch ports and HDMI audio excluded
    assert env["NEURALDRIVE_GPU_BACKEND"] == "vulkan"
    assert env["OLLAMA_VULKAN"] == "1"


def test_amd_rocm_is_the_images_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALDRIVE_GPU_BACKENDS", "nvidia=cuda amd=rocm intel=vulkan")
    code, env, _ = detect(tmp_path, monkeypatch, "lspci-amd.txt")
    assert code == 0
    assert env["NEURALDRIVE_GPU_BACKEND"] == "rocm"
    assert env["OLLAMA_VULKAN"] == "0"  # ROCm serves the card; Vulkan must not claim it too


def test_bad_backend_setting_is_ignored_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEURALDRIVE_GPU_BACKENDS", "amd=opencl")
    code, env, _ = detect(tmp_path, monkeypatch, "lspci-amd.txt")
    assert code == 0 and env["NEURALDRIVE_GPU_BACKEND"] == "vulkan"
    assert "ignoring 'amd=opencl'" in capsys.readouterr().out


def test_intel_igpu_computes_through_vulkan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-intel-igpu.txt")
    assert code == 0
    assert run.commands("modprobe") == [["modprobe", "-a", "i915"], ["modprobe", "-a", "xe"]]
    assert env["NEURALDRIVE_GPU_VENDOR"] == "intel"
    assert env["NEURALDRIVE_GPU_DRIVER"] == "loaded"
    assert env["NEURALDRIVE_GPU_BACKEND"] == "vulkan"


# The six machines the default image must tell apart: (sample, vendor, devices, backend, OLLAMA_VULKAN).
MACHINES = [
    ("lspci-amd.txt", "amd", "0000:03:00.0:1002:744c", "vulkan", "1"),  # AMD dGPU (RX 7900)
    ("lspci-amd-apu.txt", "amd", "0000:c4:00.0:1002:15bf", "vulkan", "1"),  # AMD APU (0380 class)
    ("lspci-intel-arc.txt", "intel", "0000:03:00.0:8086:56a0", "vulkan", "1"),  # Intel Arc A770
    ("lspci-intel-igpu.txt", "intel", "0000:00:02.0:8086:46a6", "vulkan", "1"),  # Intel iGPU only
    ("lspci-intel-nvidia.txt", "nvidia", "0000:01:00.0:10de:25a2", "cuda", "0"),  # NVIDIA + Intel iGPU
    ("lspci-none-qemu.txt", "none", "", "cpu", "0"),  # no GPU (QEMU's stdvga)
]


@pytest.mark.parametrize(("sample", "vendor", "devices", "backend", "vulkan"), MACHINES)
def test_default_image_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: str,
                                         vendor: str, devices: str, backend: str, vulkan: str) -> None:
    code, env, _ = detect(tmp_path, monkeypatch, sample)
    assert code == 0
    assert (env["NEURALDRIVE_GPU_VENDOR"], env["NEURALDRIVE_GPU_DEVICES"]) == (vendor, devices)
    assert (env["NEURALDRIVE_GPU_BACKEND"], env["OLLAMA_VULKAN"]) == (backend, vulkan)


def test_laptop_with_intel_igpu_and_nvidia_dgpu_uses_the_nvidia(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-intel-nvidia.txt")
    assert code == 0
    assert run.commands("modprobe") == [NVIDIA_MODULES, ["modprobe", "-a", "i915"],
                                        ["modprobe", "-a", "xe"]]
    assert env["NEURALDRIVE_GPU_PRESENT"] == "nvidia intel"
    assert env["NEURALDRIVE_GPU_VENDOR"] == "nvidia"
    assert env["NEURALDRIVE_GPU_DEVICES"] == "0000:01:00.0:10de:25a2"
    assert env["NEURALDRIVE_GPU_BACKEND"] == "cuda"


def test_cpu_image_on_an_nvidia_box_loads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-nvidia-single.txt", vendors="")
    assert code == 0
    assert run.calls == []
    assert env["NEURALDRIVE_GPU_PRESENT"] == "nvidia"
    assert env["NEURALDRIVE_GPU_VENDOR"] == "none"
    assert env["NEURALDRIVE_GPU_BACKEND"] == "cpu"
    assert "no driver for them" in capsys.readouterr().out


def test_image_for_amd_ignores_the_nvidia_of_a_mixed_box(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code, env, run = detect(tmp_path, monkeypatch, "lspci-intel-nvidia.txt", vendors="intel")
    assert code == 0
    assert [c[2] for c in run.commands("modprobe")] == ["i915", "xe"]
    assert env["NEURALDRIVE_GPU_VENDOR"] == "intel"


def test_failed_modprobe_is_recorded_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner({("modprobe", "-a", "nvidia-current"):
                         (1, "", "modprobe: FATAL: Module nvidia-current not found in directory\n")})
    code, env, _ = detect(tmp_path, monkeypatch, "lspci-nvidia-single.txt", runner=runner)
    assert code == 0
    assert env["NEURALDRIVE_GPU_VENDOR"] == "nvidia"
    assert env["NEURALDRIVE_GPU_DRIVER"] == "missing"
    assert env["NEURALDRIVE_GPU_BACKEND"] == "cpu"
    assert "driver missing" in capsys.readouterr().out


def test_xe_is_best_effort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = FakeRunner({("modprobe", "-a", "xe"): (1, "", "modprobe: FATAL: Module xe not found\n")})
    code, env, _ = detect(tmp_path, monkeypatch, "lspci-intel-igpu.txt", runner=runner)
    assert code == 0
    assert env["NEURALDRIVE_GPU_DRIVER"] == "loaded"


def test_sysfs_and_lspci_agree() -> None:
    from_sysfs = gpu.scan_sysfs(SAMPLES / "sysfs-intel-nvidia")
    from_lspci = gpu.parse_lspci((SAMPLES / "lspci-intel-nvidia.txt").read_text())
    assert from_sysfs == from_lspci
    assert [d.label() for d in from_sysfs if d.class_code in gpu.DISPLAY_CLASSES] == [
        "0000:00:02.0:8086:9a60", "0000:01:00.0:10de:25a2"]


def test_sysfs_is_the_default_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALDRIVE_GPU_VENDORS", ALL)
    run = FakeRunner()
    code = gpu_detect.main(["--root", str(tmp_path), "--sysfs", str(SAMPLES / "sysfs-intel-nvidia")],
                           run)
    assert code == 0
    assert run.commands("modprobe")[0] == NVIDIA_MODULES
    assert "NEURALDRIVE_GPU_BACKEND=\"cuda\"" in (tmp_path / "run/neuraldrive/gpu.env").read_text()


def _fake_bin(tmp_path: Path) -> tuple[Path, Path]:
    """modprobe/udevadm stand-ins that log their arguments."""
    bindir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bindir.mkdir()
    for name in ("modprobe", "udevadm"):
        script = bindir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        script.chmod(0o755)
    return bindir, calls


def test_program_writes_gpu_env_atomically_with_fake_modprobe(tmp_path: Path) -> None:
    bindir, calls = _fake_bin(tmp_path)
    root = tmp_path / "root"
    result = subprocess.run(
        [*program("usr/lib/neuraldrive/gpu-detect"), "--root", str(root),
         "--lspci-file", str(SAMPLES / "lspci-amd.txt")],
        env=clean_env(PATH=f"{bindir}:/usr/bin:/bin", NEURALDRIVE_GPU_VENDORS=ALL),
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["modprobe -a amdgpu", "udevadm settle --timeout=10"]
    env_dir = root / "run/neuraldrive"
    assert [p.name for p in env_dir.iterdir()] == ["gpu.env"]  # no temp file left behind
    assert stat.S_IMODE(os.stat(env_dir / "gpu.env").st_mode) == 0o644  # the engine reads it
    assert "GPU: amd x1, driver loaded, backend vulkan" in result.stdout


def test_dry_run_loads_and_writes_nothing(tmp_path: Path) -> None:
    bindir, calls = _fake_bin(tmp_path)
    result = subprocess.run(
        [*program("usr/lib/neuraldrive/gpu-detect"), "--dry-run", "--root", str(tmp_path / "r"),
         "--lspci-file", str(SAMPLES / "lspci-intel-nvidia.txt")],
        env=clean_env(PATH=f"{bindir}:/usr/bin:/bin", NEURALDRIVE_GPU_VENDORS=ALL),
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert not calls.exists()
    assert not (tmp_path / "r").exists()
    assert "would run: modprobe -a nvidia-current nvidia-current-uvm nvidia-current-drm" in result.stdout
    assert 'NEURALDRIVE_GPU_BACKEND="cuda"' in result.stdout


def test_unreadable_lspci_file_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*program("usr/lib/neuraldrive/gpu-detect"), "--root", str(tmp_path),
         "--lspci-file", str(tmp_path / "missing.txt")],
        env=clean_env(), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("gpu-detect: ")
    assert len(result.stderr.splitlines()) == 1


def test_no_pci_listing_still_lets_the_engine_start_on_cpu(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALDRIVE_GPU_VENDORS", ALL)
    run = FakeRunner({("lspci",): (127, "", "lspci: command not found")})
    code = gpu_detect.main(["--root", str(tmp_path), "--sysfs", str(tmp_path / "no-sysfs")], run)
    assert code == 0  # the engine Requires= this unit
    assert 'NEURALDRIVE_GPU_BACKEND="cpu"' in (tmp_path / "run/neuraldrive/gpu.env").read_text()
