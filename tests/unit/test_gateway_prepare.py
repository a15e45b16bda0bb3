"""gateway-prepare, the gateway's TLS and key hand-over, run from the host on a scratch directory:
a name-constrained CA, certificates re-issued when due or when the addresses change, no leftovers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.profile import load_profile
from tests.fixtures.gpu import CHROOT
from tests.unit.test_inimage_units import render

RENEWED = 10


@pytest.fixture()
def device(tmp_path: Path) -> dict[str, Path]:
    script = tmp_path / "gateway-prepare"
    script.write_text(render(CHROOT / "usr/lib/neuraldrive/gateway-prepare.j2", load_profile("default")))
    script.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # `ip -o addr show scope global` and `hostname` as the device would answer them.
    (bindir / "ip").write_text("#!/bin/sh\nwhile read -r a; do echo \"2: eth0    inet $a/24 brd x scope global\"; "
                               f"done < {tmp_path}/addresses\n")
    (bindir / "hostname").write_text("#!/bin/sh\necho neuraldrive\n")
    for tool in ("ip", "hostname"):
        (bindir / tool).chmod(0o755)
    (tmp_path / "addresses").write_text("192.168.1.20\n")
    (tmp_path / "api-key").write_text("nd-" + "k" * 43 + "\n")
    return {"root": tmp_path, "script": script, "bin": bindir, "tls": tmp_path / "tls"}


def run(device: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    root = device["root"]
    env = {"PATH": f"{device['bin']}:/usr/bin:/bin", "NEURALDRIVE_TLS_DIR": str(device["tls"]),
           "NEURALDRIVE_API_KEY_FILE": str(root / "api-key"), "NEURALDRIVE_RUN_DIR": str(root / "run"),
           "NEURALDRIVE_GATEWAY_GROUP": str(os.getgid())}
    return subprocess.run(["sh", str(device["script"]), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def verify(tls: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(tls / "ca.crt"), str(tls / "server.crt")],
                          capture_output=True, text=True, check=False)


def test_first_start_makes_a_name_constrained_ca_and_a_valid_certificate(device: dict[str, Path]) -> None:
    result = run(device)
    assert result.returncode == 0, result.stderr
    tls = device["tls"]
    text = openssl("x509", "-in", str(tls / "ca.crt"), "-noout", "-text")
    assert "Name Constraints: critical" in text and "DNS:neuraldrive.local" in text
    assert "IP:192.168.0.0/255.255.0.0" in text and "pathlen:0" in text
    assert verify(tls).returncode == 0
    assert "IP Address:192.168.1.20" in openssl("x509", "-in", str(tls / "server.crt"), "-noout", "-ext",
                                                "subjectAltName")
    assert not (device["root"] / "run").exists()  # no key handed to Caddy any more
    assert sorted(p.name for p in tls.iterdir()) == ["ca.addresses", "ca.crt", "ca.key", "ca.srl",
                                                     "server.crt", "server.key", "server.sans"]
    assert oct(os.stat(tls / "ca.key").st_mode & 0o777) == "0o600"


def test_renew_does_nothing_when_nothing_changed(device: dict[str, Path]) -> None:
    assert run(device).returncode == 0
    before = (device["tls"] / "server.crt").read_bytes()
    assert run(device, "--renew").returncode == 0
    assert (device["tls"] / "server.crt").read_bytes() == before


def test_a_new_dhcp_address_gets_a_new_certificate(device: dict[str, Path]) -> None:
    assert run(device).returncode == 0
    (device["root"] / "addresses").write_text("10.1.2.3\n")
    result = run(device, "--renew")
    assert result.returncode == RENEWED, result.stderr
    assert "names or addresses changed" in result.stdout
    assert "IP Address:10.1.2.3" in openssl("x509", "-in", str(device["tls"] / "server.crt"), "-noout",
                                            "-ext", "subjectAltName")
    assert verify(device["tls"]).returncode == 0


def test_a_certificate_near_its_end_is_reissued(device: dict[str, Path]) -> None:
    assert run(device).returncode == 0
    tls = device["tls"]
    # Replace the certificate with one from the same CA that ends in 5 days.
    subprocess.run(["openssl", "req", "-new", "-key", str(tls / "server.key"), "-subj", "/CN=neuraldrive",
                    "-out", str(tls / "old.csr")], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(tls / "old.csr"), "-CA", str(tls / "ca.crt"),
                    "-CAkey", str(tls / "ca.key"), "-days", "5", "-out", str(tls / "server.crt")],
                   check=True, capture_output=True)
    result = run(device, "--renew")
    assert result.returncode == RENEWED and "ends within 30 days" in result.stdout
    assert subprocess.run(["openssl", "x509", "-in", str(tls / "server.crt"), "-noout", "-checkend",
                           str(300 * 86400)], capture_output=True, check=False).returncode == 0
    assert not (tls / "old.csr").exists()  # leftovers of an interrupted run are cleared


def test_an_address_outside_the_ca_constraints_is_left_out(device: dict[str, Path]) -> None:
    assert run(device).returncode == 0
    (device["root"] / "addresses").write_text("192.168.1.20\n203.0.113.9\n")
    result = run(device, "--renew")
    assert "203.0.113.9 is outside the device CA's constraints" in result.stdout
    assert "203.0.113.9" not in (device["tls"] / "server.sans").read_text()
    assert verify(device["tls"]).returncode == 0  # a certificate the CA may sign, not a broken one


def test_no_api_key_is_a_one_line_error(device: dict[str, Path]) -> None:
    (device["root"] / "api-key").unlink()
    result = run(device)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
