"""The engine install step: driver version from the chroot's dpkg status, safe extraction with the
backend plan, the manifest hook 03 checks, and the hook itself run against the result."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.artifacts.lock import Artifact
from builder.errors import ArtifactError, LiveBuildError
from builder.image.engine import install_engine, installed_versions, nvidia_driver, upstream_version
from builder.image.render import StagedArtifact, facts, render_file
from builder.profile import load_profile
from builder.proof.ollama_double.package import build_archive
from tests.fixtures.engine_archive import REAL_LAYOUT, ROCM_LAYOUT, f, write_archive

STATUS = """\
Package: libcuda1
Status: install ok installed
Architecture: amd64
Version: 550.163.01-2
Description: NVIDIA CUDA Driver Library
 Multi-line description: with a colon.

Package: nvidia-kernel-dkms
Status: install ok installed
Version: 550.163.01-2
Depends: dkms

Package: removed-thing
Status: deinstall ok config-files
Version: 1.0-1
"""


def chroot_with(tmp_path: Path, status: str) -> Path:
    build_dir = tmp_path / "build"
    (build_dir / "chroot/usr/local/bin").mkdir(parents=True)
    (build_dir / "chroot/usr/local/lib").mkdir()
    (build_dir / "chroot/var/lib/dpkg").mkdir(parents=True)
    (build_dir / "chroot/var/lib/dpkg/status").write_text(status)
    return build_dir


def staged(path: Path, name: str = "ollama-linux-amd64.tar.zst", sha: str | None = None) -> StagedArtifact:
    from builder.files import sha256_file

    digest = sha256_file(path)
    cached = path.parent / "cache" / digest  # the artifact cache names files by their sha256
    cached.parent.mkdir(exist_ok=True)
    path.rename(cached)
    return StagedArtifact(Artifact(name=name, version="0.32.7", url="https://x/" + name, sha256=sha or digest,
                                   source=""), cached)


def test_dpkg_status_parsing() -> None:
    versions = installed_versions(STATUS)
    assert versions == {"libcuda1": "550.163.01-2", "nvidia-kernel-dkms": "550.163.01-2"}
    assert upstream_version("1:550.163.01-2~deb13u1") == "550.163.01"


def test_nvidia_image_drops_what_its_driver_cannot_run(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, STATUS)
    assert nvidia_driver(build_dir / "chroot") == ("libcuda1", "550.163.01")
    archive = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", REAL_LAYOUT)
    result = install_engine(load_profile("nvidia"), [staged(archive)], build_dir)
    local = build_dir / "chroot/usr/local"
    assert (local / "lib/ollama/cuda_v12/libggml-cuda.so").is_file()
    assert not (local / "lib/ollama/cuda_v13").exists() and not (local / "lib/ollama/vulkan").exists()
    info = json.loads(json.dumps(result.as_dict()))
    assert info["nvidia_driver"] == "550.163.01" and info["driver_package"] == "libcuda1"
    assert info["kept_backends"] == ["lib/ollama/cuda_v12"]
    assert {d["path"]: d["reason"] for d in info["dropped_backends"]} == {
        "lib/ollama/cuda_v13": "CUDA 13 needs NVIDIA driver >= 580; the image has 550.163.01",
        "lib/ollama/vulkan": "Vulkan serves AMD and Intel GPUs here and gpu.vendors has neither",
    }
    manifest = (build_dir / "config/neuraldrive-artifacts/engine-files.txt").read_text().splitlines()
    assert manifest == sorted(manifest) and "bin/ollama" in manifest
    assert not any("cuda_v13" in line or "vulkan" in line for line in manifest)
    assert "cuda_v12, " not in result.summary() and "dropped: cuda_v13, vulkan" in result.summary()


def test_newer_driver_keeps_both_cuda_majors(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, STATUS.replace("550.163.01", "580.95.05"))
    archive = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", REAL_LAYOUT)
    result = install_engine(load_profile("nvidia"), [staged(archive)], build_dir)
    assert result.plan.kept == ("lib/ollama/cuda_v12", "lib/ollama/cuda_v13")


def test_nvidia_profile_without_a_driver_package(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, "Package: bash\nStatus: install ok installed\nVersion: 5.2\n")
    archive = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", REAL_LAYOUT)
    with pytest.raises(LiveBuildError, match=r"gpu\.vendors has nvidia but neither of libcuda1, nvidia-kernel-dkms"):
        install_engine(load_profile("nvidia"), [staged(archive)], build_dir)
    assert not (build_dir / "chroot/usr/local/bin/ollama").exists()


def test_rocm_archive_after_the_base(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, "")
    base = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", REAL_LAYOUT)
    rocm = write_archive(tmp_path / "ollama-linux-amd64-rocm.tar.zst", ROCM_LAYOUT)
    profile = load_profile("amd")
    from dataclasses import replace

    profile = replace(profile, gpu=replace(profile.gpu, amd=replace(profile.gpu.amd, backend="rocm")))
    result = install_engine(profile, [staged(base), staged(rocm, "ollama-linux-amd64-rocm.tar.zst")], build_dir)
    assert result.plan.kept == ("lib/ollama/rocm", "lib/ollama/vulkan")
    assert (build_dir / "chroot/usr/local/lib/ollama/rocm/rocblas/library/TensileLibrary_gfx1100.dat").is_file()


def test_archive_changed_in_the_cache_is_refused(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, "")
    archive = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", REAL_LAYOUT)
    with pytest.raises(ArtifactError, match="is pinned to " + "0" * 64):
        install_engine(load_profile("cpu"), [staged(archive, sha="0" * 64)], build_dir)
    assert not (build_dir / "chroot/usr/local/bin/ollama").exists()


def hook_for(build_dir: Path) -> str:
    """Hook 03 as rendered, with the chroot's absolute paths mapped into the test's build dir."""
    text = render_file(Path("hooks/03-install-extras.hook.chroot.j2"), load_profile("test"))
    return (text.replace(facts()["STAGED_ARTIFACT_DIR"], str(build_dir / "config/neuraldrive-artifacts"))
                .replace("/usr/local", str(build_dir / "chroot/usr/local")))


def run_hook(build_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", hook_for(build_dir)], capture_output=True, text=True, check=False)


def test_hook_03_verifies_what_the_builder_installed(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, "")
    archive = build_archive(tmp_path / "double")  # the test image's engine
    install_engine(load_profile("test"), [staged(archive)], build_dir)
    ok = run_hook(build_dir)
    assert ok.returncode == 0, ok.stderr
    stray = build_dir / "chroot/usr/local/lib/ollama/cuda_v13"
    stray.mkdir()
    (stray / "libggml-cuda.so").write_bytes(b"x")
    bad = run_hook(build_dir)
    assert bad.returncode == 1 and "+lib/ollama/cuda_v13/libggml-cuda.so" in bad.stderr
    assert "differs from what the builder installed" in bad.stderr


def test_hook_03_without_the_builder(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, "")
    (build_dir / "chroot/usr/local/bin/ollama").write_text("#!/bin/sh\n")
    result = run_hook(build_dir)
    assert result.returncode == 1 and "installed by build.py" in result.stderr


def test_no_archive_staged(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="--no-artifacts"):
        install_engine(load_profile("cpu"), [], chroot_with(tmp_path, ""))


def test_setuid_file_never_lands(tmp_path: Path) -> None:
    build_dir = chroot_with(tmp_path, "")
    archive = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", [*REAL_LAYOUT, f("bin/su", b"x", 0o4755)])
    install_engine(load_profile("cpu"), [staged(archive)], build_dir)
    assert (build_dir / "chroot/usr/local/bin/su").stat().st_mode & 0o7777 == 0o755
