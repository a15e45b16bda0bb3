"""The console menu's logic against a fake screen (and the Ollama double): its own keys, status, the connect
screen, the API key's rotation, logs and power. Models, SSH keys and the real dialog screens: test_console_*.py."""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from builder.proof import consolemenu
from tests.conftest import OllamaDouble
from tests.fixtures.console import FakeScreen, device
from tests.fixtures.gpu import FakeRunner, lib
from tests.fixtures.neuraldrive import IP_JSON, SYSTEMD

console = lib("console")
common = lib("common")
ollama = lib("ollama")

QR = "█▀▀▀▀▀█ ▄ █▀▀▀▀▀█\n█ ███ █ ▀ █ ███ █"


def test_the_image_test_types_the_menus_own_keys() -> None:
    """builder/proof/consolemenu.py drives the menu over the serial console by these keys and titles."""
    items = dict(console.MAIN_ITEMS)
    assert items[consolemenu.STATUS] == "Status"
    assert items[consolemenu.CONNECT].startswith("URL, API key")
    assert items[consolemenu.ROTATE] == "Rotate the API key"
    assert items[consolemenu.SSH_KEY] == "Add an SSH public key"
    assert consolemenu.TITLE == console.TITLE
    assert len({k for k, _ in console.MAIN_ITEMS}) == len(console.MAIN_ITEMS)


def test_status_is_what_neuraldrive_status_prints(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    screen = FakeScreen(("menu", "1"))
    dev = device(tmp_path, ollama_double.host)
    console.main_menu(screen, dev)
    ((title, body),) = screen.texts()
    version = ollama.Client(ollama_double.host).version()
    assert title == "Status"
    assert f"Engine    Ollama {version} at http://{ollama_double.host}" in body
    assert "API       https://192.168.1.20:8443/" in body and "Health" in body
    code, again = dev.admin(["status"])
    assert code == 0 and sorted(line for line in again.splitlines() if not line.startswith("Uptime")) == sorted(
        line for line in body.splitlines() if not line.startswith("Uptime"))
    # The unit states (a line each) last: the engine's line within the first rows of a 24-row console.
    lines = body.splitlines()
    services = next(i for i, line in enumerate(lines) if line.startswith("Services"))
    assert lines[services:] == [line for line in again.splitlines()
                                if line.startswith("Services") or line.startswith(" " * 10 + "neuraldrive-")]
    assert next(i for i, line in enumerate(lines) if line.startswith("Engine")) < min(services, 15)


def test_status_of_a_stopped_engine_says_so(tmp_path: Path) -> None:
    screen = FakeScreen(("menu", "1"))
    console.main_menu(screen, device(tmp_path, "127.0.0.1:9"))
    ((title, body),) = screen.texts()
    assert title == "Status (neuraldrive status: exit 1)"
    assert "Engine    not answering at http://127.0.0.1:9" in body
    assert "see systemctl status neuraldrive-ollama.service" in body  # its stderr line, shown too


def test_connect_screen_shows_url_key_and_the_urls_qr_code(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("nd-the-key\n")
    run = FakeRunner({**SYSTEMD, ("qrencode",): (0, QR + "\n", "")})
    screen = FakeScreen(("menu", "2"))
    console.main_menu(screen, device(tmp_path, "127.0.0.1:9", run=run))
    (plain,) = [s[1] for s in screen.shown if s[0] == "plain"]
    lines = plain.splitlines()
    assert lines[0] == "API URL:  https://192.168.1.20:8443/"
    assert "API key:  nd-the-key" in lines
    assert lines[-1] == consolemenu.CONNECT_DONE.join(["The QR code is the API URL. ", ""])
    assert QR in plain
    key = "nd-" + "k" * 43
    (tmp_path / "api-key").write_text(key)
    found = consolemenu.KEY_ON_SCREEN.search(console.connect_screen(device(tmp_path, "127.0.0.1:9", run=run)))
    assert found is not None and found[1] == key  # what the image test reads off the serial console
    assert run.commands("qrencode") == [["qrencode", "-t", "UTF8", "-m", "2", "-l", "L", "--",
                                         "https://192.168.1.20:8443/"]] * 2
    assert len(lines) <= 24 - 15 + len(QR.splitlines())  # fits 24 rows with a 15-row code


@pytest.mark.skipif(shutil.which("qrencode") is None, reason="needs qrencode (scripts/setup-host)")
def test_connect_screen_qr_code_from_the_real_qrencode(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("nd-the-key\n")

    def run(argv: Sequence[str]) -> Any:
        return FakeRunner(dict(SYSTEMD))(argv) if argv[0] == "ip" else common.run_command(argv)

    body = console.connect_screen(device(tmp_path, "127.0.0.1:9", run=run))
    expected = subprocess.run(["qrencode", "-t", "UTF8", "-m", "2", "-l", "L", "https://192.168.1.20:8443/"],
                              capture_output=True, text=True, check=True).stdout.rstrip("\n")
    assert expected in body and len(body.splitlines()) <= 24


def test_rotate_asks_first_then_makes_a_new_key(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("nd-old")
    dev = device(tmp_path, "127.0.0.1:9")
    screen = FakeScreen(("menu", "3"), ("yesno", False))
    console.main_menu(screen, dev)
    assert (tmp_path / "api-key").read_text() == "nd-old" and screen.texts() == []
    screen = FakeScreen(("menu", "3"), ("yesno", True))
    console.main_menu(screen, dev)
    new = (tmp_path / "api-key").read_text()
    assert new != "nd-old" and new.startswith("nd-")
    ((title, body),) = screen.texts()
    assert title == "API key rotated" and body.splitlines()[0] == new
    assert stat.S_IMODE((tmp_path / "api-key").stat().st_mode) == 0o640
    assert ["systemctl", "start", "--no-block", "neuraldrive-issue.service"] in dev.run.calls


def test_rotate_failure_is_shown_not_raised(tmp_path: Path) -> None:
    dev = device(tmp_path, "127.0.0.1:9")
    dev.admin_options["key_group"] = "no-such-group-here"
    screen = FakeScreen(("menu", "3"), ("yesno", True))
    console.main_menu(screen, dev)
    assert screen.texts() == [("API key NOT rotated", "neuraldrive: group no-such-group-here does not exist; "
                                                      "the gateway could not read a key\n")]


def test_logs_of_one_unit(tmp_path: Path) -> None:
    run = FakeRunner({**SYSTEMD, ("journalctl",): (0, "Dec 02 engine started\n", "")})
    screen = FakeScreen(("menu", "6"), ("menu", "2"))
    console.main_menu(screen, device(tmp_path, "127.0.0.1:9", run=run))
    assert run.commands("journalctl") == [["journalctl", "--no-pager", "--lines=300",
                                           "--unit=neuraldrive-ollama.service"]]
    assert screen.texts() == [("Logs: Engine (last 300 lines)", "Dec 02 engine started\n")]
    logs_menu = [s for s in screen.shown if s[0] == "menu"][1]
    assert logs_menu[1] == "Logs" and "journal" in logs_menu[2]


@pytest.mark.parametrize(("key", "verb"), [("7", "reboot"), ("8", "poweroff")])
def test_reboot_and_poweroff_ask_first(tmp_path: Path, key: str, verb: str) -> None:
    dev = device(tmp_path, "127.0.0.1:9")
    console.main_menu(FakeScreen(("menu", key), ("yesno", False)), dev)
    assert dev.run.commands("systemctl") == []
    console.main_menu(FakeScreen(("menu", key), ("yesno", True)), dev)
    assert dev.run.commands("systemctl") == [["systemctl", verb]]
    failing = device(tmp_path, "127.0.0.1:9", run=FakeRunner({**SYSTEMD, ("systemctl", verb): (1, "", "denied")}))
    screen = FakeScreen(("menu", key), ("yesno", True))
    console.main_menu(screen, failing)
    assert screen.texts() == [(verb.capitalize(), f"systemctl {verb} failed: denied")]


def test_main_menu_shows_the_url_and_cancel_does_nothing(tmp_path: Path) -> None:
    dev = device(tmp_path, "127.0.0.1:9")
    screen = FakeScreen(("menu", None))
    console.main_menu(screen, dev)
    ((_kind, title, text, items),) = screen.shown
    assert title == "NeuralDrive console" and "https://192.168.1.20:8443/" in text
    assert items == list(console.MAIN_ITEMS)
    assert "shell" not in " ".join(label.lower() for _, label in items)  # no way to a shell


def test_connect_screen_without_a_key_yet(tmp_path: Path) -> None:
    run = FakeRunner({("ip",): (0, IP_JSON, ""), ("qrencode",): (0, "QR\n", "")})
    body = console.connect_screen(device(tmp_path, "127.0.0.1:9", run=run))
    assert "API key:  not created yet (first boot still running?)" in body
