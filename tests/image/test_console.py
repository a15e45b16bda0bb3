"""The console menu on the serial console, used as a person at the machine would: keys typed on
ttyS0, the screen read back through a terminal emulator (builder/vm/screen.py), the effects checked
over SSH and through the gateway (issue 14 item 3)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.proof import consolemenu
from builder.vm.screen import SerialScreen
from tests.image.helpers import Gateway

TIMEOUT = 120.0
ADMIN_KEYS = "/var/lib/neuraldrive/authorized_keys/neuraldrive-admin"


@pytest.fixture(scope="module")
def serial() -> Iterator[SerialScreen]:
    screen = SerialScreen(Path(os.environ["NEURALDRIVE_SERIAL_LOG"]), Path(os.environ["NEURALDRIVE_SERIAL_SOCKET"]))
    # The menu has been up since boot; Esc there redraws it whole (kernel lines may have scrolled it).
    screen.send("\x1b")
    time.sleep(2)
    screen.wait_for(consolemenu.TITLE, TIMEOUT)
    yield screen


def test_the_menu_takes_the_login_prompts_place(host: Any) -> None:
    for unit in ("neuraldrive-console@tty1.service", "neuraldrive-console@ttyS0.service"):
        assert host.service(unit).is_running, unit
    for getty in ("getty@tty1.service", "serial-getty@ttyS0.service"):
        state = host.run(f"systemctl is-active {getty}").stdout.strip()
        assert state == "inactive", f"{getty} is {state}"
    assert host.run("systemctl is-enabled getty@tty1.service").stdout.strip() == "masked"
    with host.sudo():
        pids = host.check_output("systemctl show -P MainPID neuraldrive-console@ttyS0.service")
        assert "/usr/lib/neuraldrive/console" in host.check_output(f"tr '\\0' ' ' < /proc/{pids}/cmdline")


def test_status_screen_shows_the_engine_state_and_version(serial: SerialScreen, gateway: Gateway,
                                                          api_key: str, host: Any) -> None:
    version = gateway.request("GET", "/api/version", key=api_key).json()["version"]
    shown = consolemenu.choose(serial, consolemenu.STATUS, "Engine    ", TIMEOUT)
    assert f"Engine    Ollama {version} at http://127.0.0.1:11434" in shown, shown
    assert "Health    " in shown and "API       https://" in shown
    image_version = host.run(". /etc/os-release && echo ${IMAGE_VERSION:-}").stdout.strip()
    if image_version:  # the image's version in status (helper "stick"'s contract)
        assert image_version in shown, shown
    consolemenu.back_to_menu(serial, TIMEOUT)


def test_url_screen_shows_the_key_and_a_qr_code_of_the_url(serial: SerialScreen, api_key: str, host: Any) -> None:
    shown = consolemenu.choose(serial, consolemenu.CONNECT, consolemenu.CONNECT_DONE, TIMEOUT)
    url = re.search(r"API URL:  (https://\S+)", shown)
    assert url, shown
    address = host.check_output("ip -j -4 addr show scope global up | python3 -c "
                                "\"import json,sys; print([a['local'] for l in json.load(sys.stdin) "
                                "for a in l['addr_info']][0])\"")
    assert url[1] == f"https://{address}:8443/"
    found = consolemenu.KEY_ON_SCREEN.search(shown)
    assert found and found[1] == api_key
    # The code on the screen is exactly qrencode's for the URL shown (the guest's own qrencode).
    qr = host.check_output(f"qrencode -t UTF8 -m 2 -l L -- {url[1]}").rstrip("\n")
    assert len(qr.splitlines()) >= 15 and qr in shown, shown
    consolemenu.back_to_menu(serial, TIMEOUT)


def test_rotating_the_key_changes_what_the_gateway_accepts(serial: SerialScreen, gateway: Gateway,
                                                           api_key: str, host: Any) -> None:
    assert gateway.request("GET", "/api/tags", key=api_key).status == 200
    consolemenu.choose(serial, consolemenu.ROTATE, "Make a new API key?", TIMEOUT)
    serial.send(consolemenu.YES)
    shown = serial.wait_for("API key rotated", TIMEOUT)
    with host.sudo():
        new = host.check_output("cat /var/lib/neuraldrive/secrets/api-key").strip()
    assert new != api_key and new.startswith("nd-")
    assert new in serial.text()
    assert gateway.request("GET", "/api/tags", key=api_key).status == 401  # the old key: refused
    assert gateway.request("GET", "/api/tags", key=new).status == 200
    consolemenu.back_to_menu(serial, TIMEOUT)
    assert shown == "API key rotated"


def test_adding_an_ssh_key_writes_the_admins_file(serial: SerialScreen, host: Any, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "console-test", "-f", str(tmp_path / "k")],
                   check=True)
    public = (tmp_path / "k.pub").read_text().strip()
    with host.sudo():
        before = host.run(f"cat {ADMIN_KEYS}").stdout
    consolemenu.choose(serial, consolemenu.SSH_KEY, "One OpenSSH public key", TIMEOUT)
    serial.send(public + consolemenu.ENTER)
    serial.wait_for("added for neuraldrive-admin", TIMEOUT)
    try:
        with host.sudo():
            after = host.check_output(f"cat {ADMIN_KEYS}")
            modes = host.check_output(f"stat -c '%U %a' {ADMIN_KEYS} $(dirname {ADMIN_KEYS})").split("\n")
        assert after.splitlines() == [*before.splitlines(), public]  # added, nothing of the operator's lost
        assert modes == ["root 644", "root 755"]
    finally:
        consolemenu.back_to_menu(serial, TIMEOUT)


def test_an_ssh_key_added_at_the_console_logs_in(host: Any, tmp_path: Path) -> None:
    """Helper "stick"'s side of the contract: sshd takes the keys in that file (key-only, admin)."""
    key = tmp_path / "k2"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = (tmp_path / "k2.pub").read_text().strip()
    with host.sudo():
        host.check_output(f"echo '{public}' >> {ADMIN_KEYS}")
    config = os.environ["NEURALDRIVE_SSH_CONFIG"]
    login = subprocess.run(["ssh", "-F", config, "-o", "ControlPath=none", "-o", "IdentitiesOnly=yes",
                            "-i", str(key), "neuraldrive-vm", "id -un"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert login.returncode == 0 and login.stdout.strip() == "neuraldrive-admin", login.stderr


def test_a_pull_that_fails_says_why_and_a_model_can_be_removed(serial: SerialScreen, gateway: Gateway,
                                                               admin_key: str, model: str, host: Any) -> None:
    copy = "nd-console-copy:latest"
    with host.sudo():  # the key of now: the rotation above made a new one
        key = host.check_output("cat /var/lib/neuraldrive/secrets/api-key").strip()
    copied = gateway.request("POST", "/api/copy", key=admin_key, body={"source": model, "destination": copy})
    assert copied.status == 200, copied.body
    names = sorted(m["name"] for m in gateway.request("GET", "/api/tags", key=key).json()["models"])
    consolemenu.choose(serial, consolemenu.MODELS, "Pull a model ...", TIMEOUT)
    serial.send("p" + consolemenu.ENTER)
    serial.wait_for("Model to pull", TIMEOUT)
    serial.send("10.0.2.2:9/library/nothing:latest" + consolemenu.ENTER)
    serial.wait_for("Pull failed", TIMEOUT)
    serial.send(consolemenu.ENTER)
    serial.wait_for("Pull a model ...", TIMEOUT)
    serial.send(str(names.index(copy) + 1) + consolemenu.ENTER)
    serial.wait_for("Remove a model", TIMEOUT)
    serial.send(consolemenu.YES)
    serial.wait_for(f"removed {copy}", TIMEOUT)
    serial.send(consolemenu.ENTER)
    serial.wait_for("Pull a model ...", TIMEOUT)
    serial.send("\x1b")  # Esc: back to the main menu
    serial.wait_for(consolemenu.TITLE, TIMEOUT)
    left = {m["name"] for m in gateway.request("GET", "/api/tags", key=key).json()["models"]}
    assert copy not in left and model in left
