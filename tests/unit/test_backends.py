"""Which GPU backends of Ollama's archive an image ships, per vendor set, AMD backend and NVIDIA driver."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.image.backends import CUDA_MIN_DRIVER, plan_prune
from builder.proof.ollama_double.package import build_archive
from tests.fixtures.engine_archive import REAL_LAYOUT, ROCM_LAYOUT, names

REAL = names(REAL_LAYOUT)
WITH_ROCM = REAL + names(ROCM_LAYOUT)
TRIXIE_DRIVER = "550.163.01"  # nvidia-kernel-dkms in Debian trixie today
CUDA12, CUDA13, VULKAN, ROCM = (f"lib/ollama/{n}" for n in ("cuda_v12", "cuda_v13", "vulkan", "rocm"))


def test_thresholds_are_nvidias_table() -> None:
    assert CUDA_MIN_DRIVER[12] == 525 and CUDA_MIN_DRIVER[13] == 580


def test_cpu_image_drops_every_gpu_backend() -> None:
    plan = plan_prune(REAL, (), "vulkan", None)
    assert set(plan.dropped) == {CUDA12, CUDA13, VULKAN} and plan.kept == ()
    assert "no nvidia" in plan.dropped[CUDA12] and "neither" in plan.dropped[VULKAN]
    kept = [m for m in REAL if plan.keeps(m)]
    assert kept == ["bin", "bin/ollama", "lib", "lib/ollama", "lib/ollama/libggml-base.so.0.0.0",
                    "lib/ollama/libggml-base.so.0", "lib/ollama/libggml-base.so", "lib/ollama/libggml-cpu-haswell.so",
                    "lib/ollama/libggml-cpu-skylakex.so", "lib/ollama/llama-server"]


def test_nvidia_on_trixies_driver_keeps_cuda12_only() -> None:
    plan = plan_prune(REAL, ("nvidia",), "vulkan", TRIXIE_DRIVER)
    assert plan.kept == (CUDA12,)
    assert plan.dropped[CUDA13] == "CUDA 13 needs NVIDIA driver >= 580; the image has 550.163.01"
    assert VULKAN in plan.dropped
    assert plan.keeps("lib/ollama/cuda_v12/libggml-cuda.so") and plan.keeps("./lib/ollama/cuda_v12/")
    assert not plan.keeps("lib/ollama/cuda_v13/libggml-cuda.so") and not plan.keeps("./lib/ollama/cuda_v13/")
    assert plan.keeps("lib/ollama/cuda_v130-notes")  # a prefix of a name is not the directory


@pytest.mark.parametrize(("driver", "kept"), [
    ("580.95.05", (CUDA12, CUDA13)), ("525.60.13", (CUDA12,)), ("520.61.05", ()), ("470.256.02", ()),
])
def test_cuda_majors_follow_the_driver(driver: str, kept: tuple[str, ...]) -> None:
    plan = plan_prune(REAL, ("nvidia",), "vulkan", driver)
    assert plan.kept == kept


def test_vulkan_serves_amd_and_intel() -> None:
    for vendors in (("amd",), ("intel",), ("amd", "intel")):
        plan = plan_prune(REAL, vendors, "vulkan", None)
        assert plan.kept == (VULKAN,) and set(plan.dropped) == {CUDA12, CUDA13}


def test_rocm_only_for_the_rocm_backend() -> None:
    vulkan = plan_prune(WITH_ROCM, ("amd",), "vulkan", None)
    assert vulkan.dropped[ROCM] == "gpu.amd.backend is vulkan, not rocm"
    rocm = plan_prune(WITH_ROCM, ("amd",), "rocm", None)
    assert rocm.kept == (ROCM, VULKAN)  # Vulkan stays: it serves GPUs ROCm does not support
    nvidia = plan_prune(WITH_ROCM, ("nvidia",), "rocm", TRIXIE_DRIVER)
    assert "no amd" in nvidia.dropped[ROCM]


def test_default_image_all_vendors() -> None:
    plan = plan_prune(REAL, ("nvidia", "amd", "intel"), "vulkan", TRIXIE_DRIVER)
    assert plan.kept == (CUDA12, VULKAN) and list(plan.dropped) == [CUDA13]
    assert plan.as_dict()["dropped_backends"] == [
        {"path": CUDA13, "reason": "CUDA 13 needs NVIDIA driver >= 580; the image has 550.163.01"}]


def test_unknown_cuda_major_is_not_shipped_blind() -> None:
    plan = plan_prune([*REAL, "lib/ollama/cuda_v14/libggml-cuda.so"], ("nvidia",), "vulkan", "600.1")
    assert "no minimum NVIDIA driver known" in plan.dropped["lib/ollama/cuda_v14"]


def test_nvidia_without_a_driver_version_is_a_bug() -> None:
    with pytest.raises(ValueError, match="driver version is unknown"):
        plan_prune(REAL, ("nvidia",), "vulkan", None)


def double_members(tmp_path: Path) -> list[str]:
    archive = build_archive(tmp_path)
    raw = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return tar.getnames()


@pytest.mark.parametrize(("vendors", "kept"), [
    ((), ()),
    (("nvidia",), (CUDA12,)),  # trixie's 550 driver: CUDA 12 only
    (("amd",), (VULKAN,)),
    (("nvidia", "amd", "intel"), (CUDA12, VULKAN)),
])
def test_the_double_is_pruned_like_the_real_layout(tmp_path: Path, vendors: tuple[str, ...],
                                                   kept: tuple[str, ...]) -> None:
    """The double carries placeholder backend dirs in the real places, so images built from it ship
    (and image tests see) exactly what a real build would."""
    members = double_members(tmp_path)
    assert "bin/ollama" in members
    plan = plan_prune(members, vendors, "vulkan", TRIXIE_DRIVER)
    assert sorted(plan.kept) == sorted(kept)
    assert set(plan.dropped) == {CUDA12, CUDA13, VULKAN} - set(kept)
    assert plan.keeps("bin/ollama") and plan.keeps("lib/ollama/testdouble/serve.py")
