"""The systemd units and config of the GPU, idle, health and console features, rendered from
real profiles: they must pass `systemd-analyze verify` and stay at exposure <= 1.5.

Rendering here is builder.image.render's: render_file renders one file as render_tree does.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder import facts
from builder.files import ROOT
from builder.image.render import render_file
from builder.profile import Profile, load_profile
from tests.fixtures.gpu import CHROOT, lib

UNIT_DIR = CHROOT / "etc/systemd/system"
# Units this feature set owns; each service's exposure must stay at or below MAX_EXPOSURE.
UNITS = ("neuraldrive-gpu-detect.service", "neuraldrive-gpu-tune.service",
         "neuraldrive-gpu-idle.service", "neuraldrive-healthcheck.service",
         "neuraldrive-healthcheck-recover.service", "neuraldrive-healthcheck.timer",
         "neuraldrive-issue.service", "neuraldrive-issue.timer", "neuraldrive-status.service")
PROGRAMS = ("gpu-detect", "gpu-tune", "gpu-idle", "healthcheck", "issue-refresh", "status-page")
MAX_EXPOSURE = 1.5
HOST_UNITS = Path("/usr/lib/systemd/system")

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None or not HOST_UNITS.is_dir(),
                                   reason="needs systemd-analyze and the host's units")


def render(template: Path, profile: Profile) -> str:
    return render_file(template, profile)


def tuned(profile: Profile) -> Profile:
    tune = dataclasses.replace(profile.gpu.tune, enabled=True, power_limit_watts=300,
                               locked_clocks_mhz=1800)
    return dataclasses.replace(profile, gpu=dataclasses.replace(profile.gpu, tune=tune))


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the host's systemd units, our programs and our units rendered (default profile)."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/lib/neuraldrive").mkdir(parents=True)
    for name in PROGRAMS:
        shutil.copy2(CHROOT / "usr/lib/neuraldrive" / name, root / "usr/lib/neuraldrive" / name)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS:
        (etc / unit).write_text(render(UNIT_DIR / f"{unit}.j2", load_profile("default")))
    return root


@needs_systemd
def test_units_pass_systemd_analyze_verify(image_root: Path) -> None:
    units = [str(image_root / "etc/systemd/system" / u) for u in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", f"--root={image_root}", *units],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == result.stderr.strip() == ""  # not even a warning


@needs_systemd
@pytest.mark.parametrize("unit", [u for u in UNITS if u.endswith(".service")])
def test_exposure_is_at_most_1_5(image_root: Path, unit: str) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             str(image_root / "etc/systemd/system" / unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_exec_paths_are_the_shipped_programs() -> None:
    for unit in UNITS:
        for line in render(UNIT_DIR / f"{unit}.j2", load_profile("default")).splitlines():
            if line.startswith("ExecStart="):
                path = line.removeprefix("ExecStart=").split()[0]
                assert path.startswith("/usr/lib/neuraldrive/")
                assert (CHROOT / path.lstrip("/")).stat().st_mode & 0o111, path


def test_health_timer_follows_the_profile() -> None:
    profile = load_profile("default")
    faster = dataclasses.replace(profile, healthcheck=dataclasses.replace(profile.healthcheck,
                                                                          interval_minutes=7))
    text = render(UNIT_DIR / "neuraldrive-healthcheck.timer.j2", faster)
    assert "OnUnitActiveSec=7min" in text


def conf(profile: Profile) -> dict[str, str]:
    common = lib("common")
    return dict(common.parse_env(render(CHROOT / "etc/neuraldrive/neuraldrive.conf.j2", profile)))


def test_conf_from_the_default_profile() -> None:
    assert conf(load_profile("default")) == {
        "NEURALDRIVE_IDLE_TIMEOUT": "300",
        "NEURALDRIVE_IDLE_INTERVAL": "30",
        "NEURALDRIVE_IDLE_PINNED": "",
        "NEURALDRIVE_HEALTH_API_TIMEOUT": "10",
        "NEURALDRIVE_HEALTH_VRAM_WARN_PERCENT": "98",
        "NEURALDRIVE_HEALTH_DISK_WARN_PERCENT": "90",
        "NEURALDRIVE_GATEWAY_PORT": "8443",
        "NEURALDRIVE_GPU_VENDORS": "nvidia amd intel",
        "NEURALDRIVE_GPU_BACKENDS": "nvidia=cuda amd=vulkan intel=vulkan",
        "NEURALDRIVE_GPU_PERSISTENCE": "1",
        "NEURALDRIVE_GPU_POWER_LIMIT": "",
        "NEURALDRIVE_GPU_LOCKED_CLOCKS": "",
    }


def test_conf_for_cpu_and_tuned_nvidia() -> None:
    assert conf(load_profile("cpu"))["NEURALDRIVE_GPU_VENDORS"] == ""
    nvidia = conf(tuned(load_profile("nvidia")))
    assert nvidia["NEURALDRIVE_GPU_VENDORS"] == "nvidia"
    assert nvidia["NEURALDRIVE_GPU_POWER_LIMIT"] == "300"
    assert nvidia["NEURALDRIVE_GPU_LOCKED_CLOCKS"] == "1800"


def test_conf_points_to_the_persistent_override() -> None:
    text = render(CHROOT / "etc/neuraldrive/neuraldrive.conf.j2", load_profile("default"))
    assert f"{facts.OVERRIDE_DIR}/neuraldrive.conf" in text.split("\n\n")[0]


def test_in_image_paths_match_the_builders_facts() -> None:
    """Every fact neuraldrive/paths.py mirrors has the builder's value; what it has of its own is a
    unit name (the builder names units by their files)."""
    paths = {name: value for name, value in vars(lib("paths")).items() if name.isupper()}
    mirrored = {name for name in paths if hasattr(facts, name)}
    assert {"API_KEY_FILE", "STATE_DIR", "GPU_ENV", "OLLAMA_PORT", "CONF_FILES", "AUTHORIZED_KEYS_DIR",
            "ADMIN_USER"} <= mirrored
    for name in mirrored:
        assert paths[name] == getattr(facts, name), name
    for name in paths.keys() - mirrored:
        assert name.endswith("_UNIT") and re.fullmatch(r"neuraldrive-[a-z-]+\.(service|timer)", paths[name]), name


def test_units_load_the_settings_files_in_order() -> None:
    """Every unit that reads the settings reads facts.CONF_FILES (all, or one file's pair), in order,
    each persistent override optional."""
    for template in UNIT_DIR.glob("*.service.j2"):
        text = render(template, load_profile("default"))
        loaded = [line.removeprefix("EnvironmentFile=") for line in text.splitlines()
                  if line.startswith("EnvironmentFile=")]
        listed = [f if f.startswith(facts.ETC_DIR) else f"-{f}" for f in facts.CONF_FILES]
        assert [f for f in loaded if f.lstrip("-") in facts.CONF_FILES] in (
            [], listed, listed[:2], listed[2:]), template.name


CONSOLE_UNIT = "neuraldrive-console@.service"  # its exposure limit: test_render_units.EXPOSURE_LIMITS


def test_console_unit_takes_the_gettys_place_and_needs_only_its_exceptions() -> None:
    text = render(UNIT_DIR / f"{CONSOLE_UNIT}.j2", load_profile("default"))
    lines = set(text.splitlines())
    assert {"Conflicts=getty@%i.service serial-getty@%i.service autovt@%i.service", "Restart=always",
            "StandardInput=tty", "TTYPath=/dev/%I", "Type=idle", "WantedBy=getty.target",
            "StartLimitIntervalSec=0", "StateDirectoryMode=0755",
            f"StateDirectory={facts.AUTHORIZED_KEYS_DIR.removeprefix('/var/lib/')}"} <= lines
    assert "CapabilityBoundingSet=CAP_CHOWN CAP_SYS_BOOT" in lines
    assert f"ReadWritePaths={facts.SECRETS_DIR}" in lines  # not the models, not /etc
    for kept in ("ProtectSystem=strict", "NoNewPrivileges=yes", "ProtectHome=yes", "PrivateTmp=yes",
                 "IPAddressAllow=localhost", "IPAddressDeny=any", "ProtectKernelModules=yes"):
        assert kept in lines, kept
    serial = (UNIT_DIR / "neuraldrive-console@ttyS0.service.d/serial.conf").read_text()
    assert "BindsTo=dev-%i.device" in serial  # no serial port, no serial console (as serial-getty@)


def test_console_menu_replaces_the_gettys_unless_the_profile_keeps_them() -> None:
    hook = ROOT / "hooks/04-enable-units.hook.chroot.j2"
    packages = ROOT / "packages.lists/base.list.chroot.j2"
    profile = load_profile("default")
    assert profile.console.menu
    enabled, listed = render(hook, profile), render(packages, profile).split()
    assert "systemctl enable neuraldrive-console@tty1.service neuraldrive-console@ttyS0.service" in enabled
    assert "systemctl mask getty@tty1.service autovt@tty1.service serial-getty@ttyS0.service" in enabled
    assert {"dialog", "qrencode", "openssh-server"} <= set(listed)  # ssh-keygen: openssh-client, its dependency
    off = dataclasses.replace(profile, console=dataclasses.replace(profile.console, menu=False))
    assert "neuraldrive-console" not in render(hook, off) and "getty" not in render(hook, off)
    assert "dialog" not in render(packages, off).split()
