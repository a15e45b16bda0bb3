"""SSH on every image, but only for keys: sshd runs when the profile enables SSH or the stick holds the
admin's public keys (at boot, or when the console writes them at runtime), and the firewall opens
port 22 exactly while it runs. Host keys are made on the device, on the persistence partition."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from builder import facts
from builder.image.render import ROOT
from builder.profile import Profile, load_profile
from tests.unit.test_inimage_units import render

CHROOT = ROOT / "includes.chroot"
DROP_IN = CHROOT / "etc/systemd/system/ssh.service.d/neuraldrive.conf.j2"
PATH_UNIT = CHROOT / "etc/systemd/system/neuraldrive-ssh-keys.path.j2"
KEYS = f"{facts.AUTHORIZED_KEYS_DIR}/{facts.ADMIN_USER}"


def no_ssh(name: str = "test") -> Profile:
    profile = load_profile(name)
    return replace(profile, ssh=replace(profile.ssh, enabled=False, authorized_keys=None))


def test_every_image_has_sshd_and_starts_it_at_boot() -> None:
    for profile in (load_profile("default"), load_profile("test"), no_ssh()):
        packages = render(ROOT / "packages.lists/base.list.chroot.j2", profile).split()
        assert "openssh-server" in packages
        hook = render(ROOT / "hooks/04-enable-units.hook.chroot.j2", profile)
        assert "systemctl enable ssh.service neuraldrive-ssh-keys.path" in hook
        assert "systemctl mask ssh.socket" in hook and "mask ssh.service" not in hook


def test_without_profile_ssh_sshd_needs_the_sticks_keys() -> None:
    """The condition is what keeps SSH off on a stick without keys (an empty file counts as none)."""
    condition = f"ConditionFileNotEmpty={KEYS}"
    assert condition in render(DROP_IN, no_ssh("default")).splitlines()
    assert condition not in render(DROP_IN, load_profile("test"))  # the test profile's SSH is always on


def test_sshd_reads_the_sticks_keys_and_nothing_but_keys() -> None:
    config = render(CHROOT / "etc/ssh/sshd_config.d/neuraldrive.conf.j2", no_ssh())
    files = re.search(r"^AuthorizedKeysFile (.+)$", config, re.MULTILINE)
    assert files and f"{facts.AUTHORIZED_KEYS_DIR}/%u" in files[1].split()
    for line in ("PasswordAuthentication no", "AuthenticationMethods publickey",
                 f"AllowUsers {facts.ADMIN_USER}", "PermitRootLogin no"):
        assert line in config.splitlines()


def test_the_path_unit_starts_ssh_when_the_keys_file_changes() -> None:
    unit = render(PATH_UNIT, no_ssh())
    # PathChanged= (edge-triggered) sees the console's rename into place; PathExists= would re-trigger a
    # condition-failed ssh.service without end while an empty file exists.
    assert f"PathChanged={KEYS}" in unit.splitlines() and "PathExists" not in unit
    assert "Unit=ssh.service" in unit.splitlines() and "WantedBy=paths.target" in unit


def test_firstboot_makes_host_keys_for_every_image() -> None:
    for profile in (no_ssh("default"), load_profile("test")):
        script = render(CHROOT / "usr/lib/neuraldrive/firstboot.j2", profile)
        assert f"hostkeys={facts.SSH_HOST_KEY_DIR}" in script and "durable_mv \"$new/key\" \"$name\"" in script
    config = render(CHROOT / "etc/ssh/sshd_config.d/neuraldrive.conf.j2", no_ssh())
    assert f"HostKey {facts.SSH_HOST_KEY_DIR}/ssh_host_ed25519_key" in config


def exec_lines(drop_in: str, key: str) -> list[str]:
    """The nft command of each ExecStartPre=/ExecStopPost= line, prefixes (+, -) dropped."""
    return [line.split("=", 1)[1].lstrip("-+") for line in drop_in.splitlines() if line.startswith(f"{key}=")]


needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
                                 reason="needs root, nft and unshare (a throwaway network namespace)")


@needs_netns
def test_the_firewall_opens_ssh_only_while_sshd_runs(tmp_path: Path) -> None:
    """The real ruleset loaded in a throwaway network namespace, then the drop-in's own commands."""
    profile = no_ssh()
    ruleset = tmp_path / "nftables.conf"
    ruleset.write_text(render(CHROOT / "etc/nftables.conf.j2", profile))
    drop_in = render(DROP_IN, profile)
    (start,), (stop,) = exec_lines(drop_in, "ExecStartPre"), exec_lines(drop_in, "ExecStopPost")
    listing = f"nft list set inet neuraldrive {facts.SSH_FIREWALL_SET}"
    script = (f"nft -f {ruleset} && echo boot; {listing}; echo start; {start} && {start} && {listing}; "
              f"echo stop; {stop} && {listing}; echo again; {stop}; echo rc=$?")
    result = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, check=False)
    boot, started, stopped, again = re.split(r"^(?:start|stop|again)$", result.stdout.split("boot\n", 1)[1],
                                             flags=re.MULTILINE)
    assert "elements" not in boot, result.stdout + result.stderr  # no keys, no sshd: closed
    assert re.search(r"elements = \{ (22|ssh) \}", started), result.stdout + result.stderr  # twice: one element
    assert "elements" not in stopped
    assert "rc=1" in again  # deleting twice fails: that is why the unit ignores it (-)
