"""GPU detection in a VM without a GPU, and the NVIDIA stack when the profile includes it."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from builder.profile import load_profile


def gpu_env(host: Any) -> dict[str, str]:
    text = host.file("/run/neuraldrive/gpu.env").content_string
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key: shlex.split(value)[0] if value else "" for key, value in pairs}


def test_gpu_detect_ran_and_chose_cpu(host: Any) -> None:
    assert host.service("neuraldrive-gpu-detect.service").is_enabled
    state = dict(line.split("=", 1) for line in host.check_output(
        "systemctl show -p ActiveState -p Result neuraldrive-gpu-detect.service").splitlines())
    assert state == {"ActiveState": "active", "Result": "success"}
    env = gpu_env(host)
    assert env["NEURALDRIVE_GPU_BACKEND"] == "cpu"
    assert env.get("NEURALDRIVE_GPU_COUNT", "0") == "0"


def test_engine_sees_the_gpu_env(host: Any) -> None:
    pid = host.check_output("systemctl show -p MainPID --value neuraldrive-ollama.service")
    with host.sudo():
        env = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "NEURALDRIVE_GPU_BACKEND=cpu" in env.splitlines()
    assert "OLLAMA_VULKAN=0" in env.splitlines()  # no Vulkan device hunt (nor lavapipe) on a CPU box


def test_status_names_the_backend(host: Any) -> None:
    out = host.check_output("neuraldrive status")
    assert "backend cpu" in out, out


def test_image_carries_only_usable_backends(host: Any, profile_name: str) -> None:
    vendors = load_profile(profile_name).gpu.vendors
    libs = host.check_output("ls /usr/local/lib/ollama").split()
    if "nvidia" not in vendors:
        assert not [name for name in libs if name.startswith("cuda_")], libs
    if not {"amd", "intel"} & set(vendors):
        assert not [name for name in libs if name.startswith("vulkan")], libs


def test_nvidia_stack_when_profiled(host: Any, profile_name: str) -> None:
    if "nvidia" not in load_profile(profile_name).gpu.vendors:
        pytest.skip(f"profile {profile_name} has no NVIDIA drivers")
    kernel = host.check_output("uname -r")
    assert host.run(f"modinfo -k {kernel} nvidia-current").rc == 0
    assert host.exists("nvidia-smi")
    assert host.exists("nvidia-modprobe")
