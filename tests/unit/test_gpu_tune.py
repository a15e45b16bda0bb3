"""gpu-tune: NVIDIA device nodes, persistence mode, power and clock limits; nothing otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.gpu import SAMPLES, FakeRunner, clean_env, lib, program

gpu = lib("gpu")
gpu_tune = lib("gpu_tune")

UVM_MAJOR = 237  # what proc-devices-nvidia.txt records


class FakeMknod:
    def __init__(self) -> None:
        self.made: list[tuple[str, int, int]] = []

    def __call__(self, path: str, mode: int, device: int) -> None:
        self.made.append((Path(path).name, os.major(device), os.minor(device)))


def machine(tmp_path: Path, state: object | None, proc_devices: bool = True) -> Path:
    """A fake root with gpu.env (if `state`), /proc/devices and an empty /dev."""
    (tmp_path / "dev").mkdir(parents=True)
    if proc_devices:
        (tmp_path / "proc").mkdir()
        shutil.copy(SAMPLES / "proc-devices-nvidia.txt", tmp_path / "proc/devices")
    if state is not None:
        env = tmp_path / "run/neuraldrive/gpu.env"
        env.parent.mkdir(parents=True)
        env.write_text(state.render())  # type: ignore[attr-defined]
    return tmp_path


NVIDIA = gpu.GpuState(present=("nvidia",), vendor="nvidia", count=1,
                      devices=("0000:01:00.0:10de:2204",), driver="loaded", backend="cuda")


def tune(root: Path, monkeypatch: pytest.MonkeyPatch, runner: FakeRunner | None = None,
         **settings: str) -> tuple[int, FakeRunner, FakeMknod]:
    for key in ("PERSISTENCE", "POWER_LIMIT", "LOCKED_CLOCKS"):
        monkeypatch.delenv(f"NEURALDRIVE_GPU_{key}", raising=False)
    for key, value in settings.items():
        monkeypatch.setenv(f"NEURALDRIVE_GPU_{key.upper()}", value)
    run, mknod = runner or FakeRunner(), FakeMknod()
    return gpu_tune.main(["--root", str(root)], run, mknod), run, mknod


@pytest.mark.parametrize("state", [
    None,  # gpu-detect has not run
    gpu.GpuState(),  # no GPU
    gpu.GpuState(present=("intel",), vendor="intel", count=1, driver="loaded"),
    gpu.GpuState(present=("nvidia",), vendor="nvidia", count=1, driver="missing"),
])
def test_does_nothing_without_a_working_nvidia(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               state: object | None) -> None:
    code, run, mknod = tune(machine(tmp_path, state), monkeypatch, power_limit="250")
    assert code == 0
    assert run.calls == []
    assert mknod.made == []


def test_defaults_make_device_nodes_and_enable_persistence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, run, mknod = tune(machine(tmp_path, NVIDIA), monkeypatch)
    assert code == 0
    assert mknod.made == [("nvidia0", 195, 0), ("nvidiactl", 195, 255),
                          ("nvidia-uvm", UVM_MAJOR, 0), ("nvidia-uvm-tools", UVM_MAJOR, 1)]
    assert run.calls == [["nvidia-smi", "-pm", "1"]]


def test_power_limit_and_locked_clocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, run, _ = tune(machine(tmp_path, NVIDIA), monkeypatch, persistence="1",
                        power_limit="300", locked_clocks="1800")
    assert code == 0
    assert run.calls == [["nvidia-smi", "-pm", "1"], ["nvidia-smi", "-pl", "300"],
                         ["nvidia-smi", "-lgc", "1800,1800"]]


def test_clock_range_and_persistence_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, run, _ = tune(machine(tmp_path, NVIDIA), monkeypatch, persistence="0",
                        locked_clocks="1500,1800")
    assert code == 0
    assert run.calls == [["nvidia-smi", "-lgc", "1500,1800"]]


def test_one_node_per_card_and_existing_nodes_kept(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    four = gpu.GpuState(present=("nvidia",), vendor="nvidia", count=4, driver="loaded", backend="cuda")
    root = machine(tmp_path, four)
    (root / "dev/nvidiactl").touch()  # made by someone else: left alone
    _, _, mknod = tune(root, monkeypatch)
    assert [name for name, _, _ in mknod.made] == [
        "nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidia-uvm", "nvidia-uvm-tools"]


def test_without_uvm_it_warns_and_still_tunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, run, mknod = tune(machine(tmp_path, NVIDIA, proc_devices=False), monkeypatch)
    assert code == 0
    assert [name for name, _, _ in mknod.made] == ["nvidia0", "nvidiactl"]
    assert "CUDA will not work" in capsys.readouterr().out
    assert run.calls == [["nvidia-smi", "-pm", "1"]]


@pytest.mark.parametrize(("key", "value"), [("power_limit", "lots"), ("power_limit", "0"),
                                            ("locked_clocks", "fast"), ("persistence", "maybe")])
def test_bad_setting_is_a_one_line_error_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        key: str, value: str) -> None:
    code, run, mknod = tune(machine(tmp_path, NVIDIA), monkeypatch, FakeRunner(), **{key: value})
    assert code == 2
    assert run.calls == [] and mknod.made == []
    err = capsys.readouterr().err
    assert err.startswith("gpu-tune: NEURALDRIVE_GPU_") and len(err.splitlines()) == 1


def test_missing_nvidia_smi_only_matters_when_limits_were_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = FakeRunner({("nvidia-smi",): (127, "", "nvidia-smi: command not found")})
    code, _, _ = tune(machine(tmp_path, NVIDIA), monkeypatch, runner=missing)
    assert code == 0  # persistence mode is a nicety
    code, _, _ = tune(machine(tmp_path / "b", NVIDIA), monkeypatch, runner=missing,
                      power_limit="250")
    assert code == 1


def test_refused_setting_fails_the_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    refused = FakeRunner({("nvidia-smi", "-pl"): (
        4, "Provided power limit 999.00 W is not a valid power limit which should be between "
           "100.00 W and 350.00 W for GPU 00000000:01:00.0\n", "")})
    code, run, _ = tune(machine(tmp_path, NVIDIA), monkeypatch, runner=refused, power_limit="999")
    assert code == 1
    assert ["nvidia-smi", "-pm", "1"] in run.calls
    assert "not a valid power limit" in capsys.readouterr().out


def test_dry_run_program(tmp_path: Path) -> None:
    root = machine(tmp_path, NVIDIA)
    result = subprocess.run(
        [*program("usr/lib/neuraldrive/gpu-tune"), "--dry-run", "--root", str(root)],
        env=clean_env(NEURALDRIVE_GPU_POWER_LIMIT="250"), capture_output=True, text=True,
        timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "would create if missing: /dev/nvidia-uvm (char 237:0)" in result.stdout
    assert "would run: nvidia-smi -pl 250" in result.stdout
    assert list((root / "dev").iterdir()) == []
