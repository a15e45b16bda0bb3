"""Security posture: exposure, firewall, secrets, accounts and SSH."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

GATEWAY_PORT = 8443


def test_only_expected_listeners_off_loopback(host: Any) -> None:
    unexpected = []
    for line in host.check_output("ss -H -lntu").splitlines():
        fields = line.split()
        proto, local = fields[0], fields[4]
        address, _, port = local.rpartition(":")
        if address.startswith(("127.", "[::1]")) or address in ("127.0.0.53%lo", "127.0.0.54"):
            continue
        if proto == "tcp" and int(port) in (GATEWAY_PORT, 22):
            continue
        if proto == "udp" and int(port) in (68, 546):  # DHCP clients
            continue
        unexpected.append(line)
    assert unexpected == []


def test_firewall_drops_by_default(host: Any) -> None:
    with host.sudo():
        ruleset = host.check_output("nft list ruleset")
    assert re.search(r"hook input priority filter; policy drop;", ruleset)
    assert "11434" not in ruleset


def test_api_key_file_is_private(host: Any, api_key: str) -> None:
    key = host.file("/var/lib/neuraldrive/secrets/api-key")
    assert key.mode == 0o640
    assert (key.user, key.group) == ("root", "neuraldrive-api")
    assert re.fullmatch(r"nd-[A-Za-z0-9_-]{43,}", api_key)
    assert host.run("sudo -u nobody cat /var/lib/neuraldrive/secrets/api-key").rc != 0


def test_admin_password_locked(host: Any) -> None:
    with host.sudo():
        status = host.check_output("passwd -S neuraldrive-admin").split()
        root = host.check_output("passwd -S root").split()
    assert status[1] == "L"
    assert root[1] == "L"


def test_sshd_refuses_passwords_and_root(host: Any) -> None:
    with host.sudo():
        config = dict(line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line)
    assert config["passwordauthentication"] == "no"
    assert config["permitrootlogin"] == "no"
    assert config["kbdinteractiveauthentication"] == "no"
    ssh_config = os.environ["NEURALDRIVE_SSH_CONFIG"]
    as_root = subprocess.run(["ssh", "-F", ssh_config, "-o", "BatchMode=yes", "-o", "ControlMaster=no",
                              "-o", "ControlPath=none", "-l", "root", "neuraldrive-vm", "true"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr
    password = subprocess.run(["ssh", "-F", ssh_config, "-o", "BatchMode=yes", "-o", "ControlMaster=no",
                               "-o", "ControlPath=none", "-o", "PubkeyAuthentication=no",
                               "-o", "PreferredAuthentications=password,keyboard-interactive", "neuraldrive-vm",
                               "true"], capture_output=True, text=True, timeout=60, check=False)
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr


def test_host_keys_are_the_devices_own_ed25519_and_ecdsa(host: Any) -> None:
    with host.sudo():
        keys = host.check_output("ls /var/lib/neuraldrive/ssh").split()
        config = host.check_output("sshd -T")
    assert sorted(k for k in keys if not k.endswith(".pub")) == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key"]
    host_keys = [line.split()[1] for line in config.splitlines() if line.startswith("hostkey ")]
    assert host_keys == ["/var/lib/neuraldrive/ssh/ssh_host_ed25519_key", "/var/lib/neuraldrive/ssh/ssh_host_ecdsa_key"]


@pytest.fixture(scope="module")
def squashfs_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's root filesystem, read from the ISO on the host (not from the running guest)."""
    work = tmp_path_factory.mktemp("squashfs")
    squashfs = work / "filesystem.squashfs"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", os.environ["NEURALDRIVE_ISO"], "-extract",
                    "/live/filesystem.squashfs", str(squashfs)], check=True, capture_output=True)
    tree = work / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(squashfs), "etc", "var/lib", "root", "home",
                    "usr/local"], check=True, capture_output=True)
    squashfs.unlink()
    return tree


def test_squashfs_holds_no_secret(squashfs_tree: Path) -> None:
    root = squashfs_tree
    assert not list((root / "etc/ssh").glob("ssh_host_*")), "SSH host keys baked into the image"
    assert not (root / "var/lib/neuraldrive/secrets/api-key").exists()
    assert not list(root.glob("var/lib/neuraldrive/tls/*"))
    assert (root / "etc/machine-id").read_text() == ""
    for line in (root / "etc/shadow").read_text().splitlines():
        user, password = line.split(":")[:2]
        assert password.startswith(("!", "*")), f"{user} has a usable password hash in the image"
    # Key material, not the marker alone (the test double's keypair writer names the marker).
    private = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40,}")
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20:
            assert not private.search(path.read_bytes()), f"private key in the image: {path}"
    keys = [p for p in root.rglob("authorized_keys*") if p.is_file()]
    expected = Path(os.environ["NEURALDRIVE_SSH_KEY"] + ".pub") if Path(
        os.environ["NEURALDRIVE_SSH_KEY"] + ".pub").exists() else None
    for path in keys:
        # Only the test profile has one: this run's own public key.
        assert os.environ["NEURALDRIVE_PROFILE"] == "test", path
        if expected is not None:
            assert path.read_text() == expected.read_text()


def test_ssh_port_is_open_only_while_sshd_runs(host: Any) -> None:
    """ssh.service's drop-in adds port 22 to the firewall's set at start and removes it at stop (our
    session survives: Debian's ssh.service stops only the listener, KillMode=process)."""
    listing = "nft list set inet neuraldrive ssh_open"
    script = (f"{listing}; systemctl stop ssh.service; echo STOPPED; {listing}; systemctl start ssh.service; "
              f"echo STARTED; {listing}")
    with host.sudo():
        out = host.check_output(f"sh -c {shlex.quote(script)}")
    running, stopped, started = re.split(r"^(?:STOPPED|STARTED)$", out, flags=re.MULTILINE)
    assert re.search(r"elements = \{ (22|ssh) \}", running), out
    assert "elements" not in stopped, out
    assert re.search(r"elements = \{ (22|ssh) \}", started), out


def test_sshd_reads_the_sticks_keys(host: Any) -> None:
    with host.sudo():
        config = host.check_output("sshd -T")
    files = re.search(r"^authorizedkeysfile (.+)$", config, re.MULTILINE)
    assert files and "/var/lib/neuraldrive/authorized_keys/%u" in files[1].split(), config
    assert host.service("neuraldrive-ssh-keys.path").is_running
    assert host.run("systemctl is-enabled ssh.socket").stdout.strip() == "masked"
