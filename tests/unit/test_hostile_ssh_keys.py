"""Hostile SSH keys: a profile's `ssh.authorized_keys` and `--authorized-keys` accept only lines that
parse as OpenSSH public keys (a private key or /etc/shadow never reaches the image), one line, exit 2."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.errors import ProfileError
from builder.image.render import render_tree
from builder.profile import load_profile
from tests.fixtures.hostile import INCLUDES, PRIVATE_KEY, pubkey, run, ssh_profile


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (PRIVATE_KEY, "admin.pub:1: not an OpenSSH public key"),
        ("root:$6$salt$hash:19000:0:99999:7:::\n", "admin.pub:1: not an OpenSSH public key"),
        (pubkey() + "\nssh-ed25519 AAAA x\n", "admin.pub:2: ssh-ed25519: key data is not a ssh-ed25519 key"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP x\n", "admin.pub:1: not an OpenSSH public key"),
        ("ssh-ed25519 !!notbase64 x\n", "admin.pub:1: ssh-ed25519: key data is not base64"),
        (pubkey(blob_type="ssh-rsa") + "\n", "admin.pub:1: ssh-ed25519: key data is not a ssh-ed25519 key"),
        ('evil="1" ' + pubkey() + "\n", "admin.pub:1: not an OpenSSH public key"),
        (pubkey(comment="a\x1bb") + "\n", "admin.pub:1: control character"),
        ("# only a comment\n\n", "admin.pub: holds no public key"),
    ],
)
def test_authorized_keys_must_be_public_keys(tmp_path: Path, keys: str, message: str) -> None:
    with pytest.raises(ProfileError) as err:
        load_profile(ssh_profile(tmp_path, keys))
    assert message in str(err.value)


def test_only_validated_key_lines_are_written(tmp_path: Path) -> None:
    keys = "\n".join([
        "# the admins", "", pubkey(), pubkey("ecdsa-sha2-nistp256", comment=""),
        pubkey("sk-ssh-ed25519@openssh.com"), pubkey("ssh-rsa", comment="a b  c"),
        'restrict,from="10.0.0.0/8,192.168.1.\\"x\\"",no-pty ' + pubkey(),
    ]) + "\n"
    profile = load_profile(ssh_profile(tmp_path, keys))
    tree = render_tree(profile, tmp_path / "tree", [])
    written = (tree / INCLUDES / "etc/ssh/authorized_keys/neuraldrive-admin").read_text()
    assert written.splitlines() == [line for line in keys.splitlines() if line and not line.startswith("#")]


def test_a_swapped_key_file_is_checked_again_at_render(tmp_path: Path) -> None:
    profile = load_profile(ssh_profile(tmp_path, pubkey() + "\n"))
    (tmp_path / "admin.pub").write_text(PRIVATE_KEY)
    with pytest.raises(ProfileError, match=r"admin\.pub:1: not an OpenSSH public key"):
        render_tree(profile, tmp_path / "tree", [])
    assert not list((tmp_path / "tree").rglob("authorized_keys"))


def test_cli_authorized_keys_refuses_a_private_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text(PRIVATE_KEY)
    result = run("tree", "--profile", "test", "--no-artifacts", "--out", str(tmp_path / "out"),
                 "--authorized-keys", str(key))
    assert result.exit_code == 2, result.output
    assert f"{key}:1: not an OpenSSH public key" in result.output
    assert not list((tmp_path / "out").rglob("authorized_keys"))


def test_cli_authorized_keys_copies_a_public_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519.pub"
    key.write_text(pubkey() + "\r\n")
    result = run("tree", "--profile", "test", "--no-artifacts", "--out", str(tmp_path / "out"),
                 "--authorized-keys", str(key))
    assert result.exit_code == 0, result.output
    written = tmp_path / "out/tree-test" / INCLUDES / "etc/ssh/authorized_keys/neuraldrive-admin"
    assert written.read_text() == pubkey() + "\n"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_keys_made_by_ssh_keygen_pass_and_their_private_halves_do_not(tmp_path: Path) -> None:
    from builder.profile.sshkeys import read_authorized_keys

    for kind, bits in [("ed25519", None), ("ecdsa", "256"), ("ecdsa", "384"), ("ecdsa", "521"), ("rsa", "3072")]:
        key = tmp_path / f"id_{kind}{bits or ''}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, *(["-b", bits] if bits else []), "-N", "", "-C", "u@h",
                        "-f", str(key)], check=True)
        public = key.with_name(key.name + ".pub")
        assert read_authorized_keys(public) == [public.read_text().strip()]
        with pytest.raises(ProfileError, match=r":1: not an OpenSSH public key"):
            read_authorized_keys(key)
