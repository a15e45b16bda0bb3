"""The rendered units as systemd sees them: `systemd-analyze verify`, each service's exposure within its
limit, and the NVIDIA module loading the units and hooks do only where a driver is loaded."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests import unitcheck
from tests.fixtures.trees import INCLUDES, PROFILES


@pytest.mark.parametrize("name", PROFILES)
def test_units_pass_systemd_analyze_verify(verify_roots: dict[str, Path], name: str) -> None:
    root = verify_roots[name]
    result = unitcheck.verify(root, unitcheck.units(root))
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines() if "neuraldrive" in line]
    assert problems == [], "\n".join(problems)


# Units with more than 1.5, each for its job: the engines need the GPU; the console menu is root
# with CAP_CHOWN (the API key's group) and CAP_SYS_BOOT (reboot), the host's devices (its terminal,
# nvidia-smi) and AF_UNIX/AF_NETLINK (docs/appliance.md, "The console menu").
EXPOSURE_LIMITS = {"neuraldrive-ollama": 2.0, "neuraldrive-llama-server": 2.0, "neuraldrive-console": 2.1}


@pytest.mark.parametrize("name", ["default", "cpu", "test"])
def test_units_exposure_within_thresholds(verify_roots: dict[str, Path], name: str) -> None:
    root = verify_roots[name]
    table = []
    failures = []
    for unit in unitcheck.units(root):
        if not unit.endswith(".service"):
            continue
        score, _ = unitcheck.exposure(root, unit)
        limit = next((v for prefix, v in EXPOSURE_LIMITS.items() if unit.startswith(prefix)), 1.5)
        table.append(f"{unit:<40} {score:4.1f}  (limit {limit})")
        if score > limit:
            failures.append(unit)
    print("\n" + "\n".join(table))
    assert failures == [], "\n".join(table)


def test_nvidia_driver_is_not_loaded_at_every_boot(trees: dict[str, Path], tmp_path: Path) -> None:
    """NVIDIA's modules-load.d link loads nvidia-drm with or without a GPU; the hook replaces it with a
    plain file that loads nothing (run here against a copy of that layout)."""
    hook_path = "config/hooks/live/04-enable-units.hook.chroot"
    assert "modules-load.d/nvidia.conf" not in (trees["cpu"] / hook_path).read_text()
    hook = (trees["nvidia"] / hook_path).read_text()
    block = [line for line in hook.splitlines() if "/etc/modules-load.d/nvidia.conf" in line]
    assert len(block) == 2, hook
    (tmp_path / "etc/nvidia").mkdir(parents=True)
    (tmp_path / "etc/modules-load.d").mkdir()
    target = tmp_path / "etc/nvidia/nvidia-load.conf"
    target.write_text("nvidia-drm\n")
    (tmp_path / "etc/modules-load.d/nvidia.conf").symlink_to(target)
    script = "\n".join(line.replace("/etc/", f"{tmp_path}/etc/") for line in block)
    subprocess.run(["sh", "-euc", script], check=True)
    conf = tmp_path / "etc/modules-load.d/nvidia.conf"
    assert not conf.is_symlink()
    assert all(line.startswith("#") for line in conf.read_text().splitlines())
    assert target.read_text() == "nvidia-drm\n"


@pytest.mark.parametrize("driver_loaded", [False, True])
def test_engine_loads_uvm_only_with_the_nvidia_driver_loaded(trees: dict[str, Path], tmp_path: Path,
                                                             driver_loaded: bool) -> None:
    unit = (trees["nvidia"] / INCLUDES / "etc/systemd/system/neuraldrive-ollama.service").read_text()
    pre = re.findall(r"^ExecStartPre=-\+/bin/sh -c '(.*)'$", unit, re.MULTILINE)
    assert [("nvidia-current-uvm" in p, "nvidia-modprobe -u" in p) for p in pre] == [(True, False), (False, True)]
    calls = tmp_path / "calls"
    recorder = tmp_path / "recorder"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    recorder.chmod(0o755)
    module_dir = tmp_path / "sys-module-nvidia"
    if driver_loaded:
        module_dir.mkdir()
    for command in pre:
        local = command.replace("/sys/module/nvidia", str(module_dir))
        local = local.replace("/sbin/modprobe", str(recorder)).replace("/usr/bin/nvidia-modprobe", str(recorder))
        subprocess.run(["sh", "-c", local], check=True)
    expected = "nvidia-current-uvm\n-u\n" if driver_loaded else None
    assert (calls.read_text() if calls.exists() else None) == expected
