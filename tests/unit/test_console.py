"""The console menu's logic against a fake screen (and the Ollama double), and its dialog screens
drawn for real in a pseudo-terminal and read back with a terminal emulator (pyte)."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from builder.proof import consolemenu
from tests.conftest import OllamaDouble
from tests.fixtures.gpu import PACKAGE_PARENT, FakeRunner, clean_env, lib, program
from tests.unit.test_neuraldrive import IP_JSON, SYSTEMD

console = lib("console")
console_ssh = lib("console_ssh")
common = lib("common")
ollama = lib("ollama")

REGISTRY = Path(tempfile.gettempdir()) / f"nd-console-registry-{os.getpid()}"
QR = "█▀▀▀▀▀█ ▄ █▀▀▀▀▀█\n█ ███ █ ▀ █ ███ █"


class FakeScreen:
    """Answers the menu's questions from a script, in order, and keeps everything it was shown."""

    def __init__(self, *answers: tuple[str, Any]) -> None:
        self.answers = list(answers)
        self.shown: list[tuple[Any, ...]] = []

    def _answer(self, kind: str) -> Any:
        assert self.answers, f"the menu asked an unscripted {kind}"
        expected, value = self.answers.pop(0)
        assert expected == kind, f"the menu asked a {kind}, the script answers a {expected}"
        return value

    def menu(self, title: str, text: str, items: Sequence[tuple[str, str]]) -> str | None:
        self.shown.append(("menu", title, text, list(items)))
        return self._answer("menu")  # type: ignore[no-any-return]

    def text(self, title: str, body: str) -> None:
        self.shown.append(("text", title, body))

    def yesno(self, title: str, question: str) -> bool:
        self.shown.append(("yesno", title, question))
        return bool(self._answer("yesno"))

    def ask(self, title: str, prompt: str) -> str | None:
        self.shown.append(("ask", title, prompt))
        return self._answer("ask")  # type: ignore[no-any-return]

    def progress(self, title: str, steps: Iterable[tuple[int, str]]) -> None:
        self.shown.append(("progress", title, list(steps)))

    def plain(self, body: str) -> None:
        self.shown.append(("plain", body))

    def texts(self) -> list[tuple[str, str]]:
        return [(s[1], s[2]) for s in self.shown if s[0] == "text"]


def device(tmp_path: Path, host: str, run: Any = None, **kw: Any) -> Any:
    group = grp.getgrgid(os.getgid()).gr_name  # stands in for neuraldrive-api
    settings = common.Settings({"OLLAMA_HOST": host, "NEURALDRIVE_GATEWAY_PORT": "8443",
                                "NEURALDRIVE_HEALTH_DISK_WARN_PERCENT": "100"})
    return console.Device(settings, run=run or FakeRunner(dict(SYSTEMD)), key_file=tmp_path / "api-key",
                          keys_file=tmp_path / "authorized_keys" / "neuraldrive-admin",
                          admin_options={"euid": lambda: 0, "key_group": group, "gpu_env": tmp_path / "gpu.env",
                                         "state_dir": tmp_path}, **kw)


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


def test_pull_steps_add_up_every_layer() -> None:
    events = [{"status": "pulling manifest"},
              {"status": "pulling aaa", "digest": "sha256:a", "total": 300, "completed": 0},
              {"status": "pulling aaa", "digest": "sha256:a", "total": 300, "completed": 300},
              {"status": "pulling bbb", "digest": "sha256:b", "total": 100, "completed": 50},
              {"status": "verifying sha256 digest"}, {"status": "success"}]
    steps = list(console.pull_steps(events))
    assert [p for p, _ in steps] == [0, 0, 100, 87, 87, 100]
    assert steps[3][1] == "pulling bbb (350 B of 400 B)"


@pytest.mark.double_env(OLLAMA_TESTDOUBLE_REGISTRY=str(REGISTRY))
def test_models_pull_with_progress_then_remove(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    from builder.proof.ollama_double import write_model

    shutil.rmtree(REGISTRY, ignore_errors=True)
    write_model(REGISTRY, "tiny:1b", 5000)
    ollama_double.add_model("kept", 1000)
    dev = device(tmp_path, ollama_double.host)
    screen = FakeScreen(("menu", "4"), ("menu", "p"), ("ask", "tiny:1b"), ("menu", None))
    try:
        console.main_menu(screen, dev)
    finally:
        shutil.rmtree(REGISTRY, ignore_errors=True)
    (progress,) = [s for s in screen.shown if s[0] == "progress"]
    assert progress[1] == "Pulling tiny:1b" and progress[2][-1] == (100, "success (4.9 KiB of 4.9 KiB)")
    assert any(0 < p < 100 or "pulling" in line for p, line in progress[2])
    assert ("Pull a model", "pulled tiny:1b") in screen.texts()
    names = sorted(ollama.entry_name(m) for m in ollama.Client(ollama_double.host).tags())
    assert names == ["kept:latest", "tiny:1b"]
    # The list now shows both; remove the second (after asking).
    screen = FakeScreen(("menu", "4"), ("menu", "2"), ("yesno", False), ("menu", "2"), ("yesno", True),
                        ("menu", None))
    console.main_menu(screen, dev)
    listing = next(s[3] for s in screen.shown if s[0] == "menu" and s[1] == "Models")
    assert listing[0] == ("p", "Pull a model ...") and listing[2][1].startswith("tiny:1b")
    assert ("Remove a model", "removed tiny:1b") in screen.texts()
    assert [ollama.entry_name(m) for m in ollama.Client(ollama_double.host).tags()] == ["kept:latest"]


def test_pull_refuses_a_bad_name_and_shows_engine_errors(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    dev = device(tmp_path, ollama_double.host)
    screen = FakeScreen(("menu", "4"), ("menu", "p"), ("ask", "-rf /"), ("menu", "p"), ("ask", "absent:1b"),
                        ("menu", None))
    console.main_menu(screen, dev)
    texts = screen.texts()
    assert texts[0] == ("Pull a model", "'-rf /' is not a model name")
    assert texts[1][0] == "Pull failed" and "file does not exist" in texts[1][1]


def test_models_with_the_engine_down(tmp_path: Path) -> None:
    screen = FakeScreen(("menu", "4"))
    console.main_menu(screen, device(tmp_path, "127.0.0.1:9"))
    ((title, body),) = screen.texts()
    assert title == "Models" and "engine not answering" in body


@pytest.fixture
def public_key(tmp_path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "op@laptop", "-f", str(tmp_path / "k")],
                   check=True)
    return (tmp_path / "k.pub").read_text().strip()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_ssh_key_is_checked_then_added_atomically(tmp_path: Path, public_key: str) -> None:
    dev = device(tmp_path, "127.0.0.1:9", run=common.run_command)
    keys = dev.keys_file
    screen = FakeScreen(("menu", "5"), ("ask", "  " + public_key.replace(" ", "   ") + "  "))
    console.main_menu(screen, dev)
    assert keys.read_text() == public_key + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o644 and stat.S_IMODE(keys.parent.stat().st_mode) == 0o755
    ((title, body),) = screen.texts()
    assert title == "Add an SSH public key" and body.startswith("added for neuraldrive-admin: 256 SHA256:")
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl other@host"
    keys.write_text(other)  # an operator's file without a final newline: kept as it was
    for answer in (public_key, public_key.rsplit(" ", 1)[0] + " renamed"):
        console.main_menu(FakeScreen(("menu", "5"), ("ask", answer)), dev)
    assert keys.read_text() == f"{other}\n{public_key}\n"  # once: the comment does not make it new
    assert [p.name for p in keys.parent.iterdir()] == ["neuraldrive-admin"]  # no temp file left


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
@pytest.mark.parametrize(("line", "why"), [
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "a public key starts with its type"),
    ('command="sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl',
     "options such as command= are not taken"),
    ("ssh-ed25519 AAAAnotbase64", "ssh-keygen does not take it"),
    ("ssh-ed25519 AAAA\x1b[2J", "without control characters"),
    ("ssh-rsa " + "A" * 20000, "longer than"),
])
def test_ssh_key_refused(tmp_path: Path, line: str, why: str) -> None:
    dev = device(tmp_path, "127.0.0.1:9", run=common.run_command)
    screen = FakeScreen(("menu", "5"), ("ask", line))
    console.main_menu(screen, dev)
    ((_, body),) = screen.texts()
    assert body.startswith("not added: ") and why in body
    assert not dev.keys_file.exists()


def test_ssh_key_cancelled_writes_nothing(tmp_path: Path) -> None:
    dev = device(tmp_path, "127.0.0.1:9")
    console.main_menu(FakeScreen(("menu", "5"), ("ask", None)), dev)
    assert not dev.keys_file.parent.exists()
    assert dev.run.calls == [["ip", "-j", "addr", "show", "scope", "global", "up"]]


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


def test_console_needs_a_terminal() -> None:
    result = subprocess.run([*program("usr/lib/neuraldrive/console")], env=clean_env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and result.stderr == "console: needs a terminal (it is the menu on tty1 and ttyS0)\n"
    helped = subprocess.run([*program("usr/lib/neuraldrive/console"), "--help"], env=clean_env(),
                            capture_output=True, text=True, timeout=30, check=False)
    assert helped.returncode == 0 and "instead of a" in helped.stdout


def test_connect_screen_without_a_key_yet(tmp_path: Path) -> None:
    run = FakeRunner({("ip",): (0, IP_JSON, ""), ("qrencode",): (0, "QR\n", "")})
    body = console.connect_screen(device(tmp_path, "127.0.0.1:9", run=run))
    assert "API key:  not created yet (first boot still running?)" in body


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from neuraldrive.console import MAIN_ITEMS, TITLE
from neuraldrive.console_dialog import DialogScreen, prepare_terminal
prepare_terminal(0)
screen = DialogScreen()
choice = screen.menu(TITLE, "API URL: https://192.168.1.20:8443/", MAIN_ITEMS)
screen.plain("API key:  nd-key\\n" + sys.argv[2])
sys.stderr.write(f"CHOICE={choice}\\n")
"""


@pytest.mark.skipif(shutil.which("dialog") is None or shutil.which("qrencode") is None,
                    reason="needs dialog and qrencode (scripts/setup-host)")
def test_dialog_screens_on_a_serial_sized_terminal(tmp_path: Path) -> None:
    """The real screens in a pseudo-terminal with no size (as a serial line), read back through
    the terminal emulator the image test uses, driven by the keys it types."""
    import pty
    import select
    import time

    from builder.vm.screen import SerialScreen
    pytest.importorskip("pyte")
    qr = subprocess.run(["qrencode", "-t", "UTF8", "-m", "2", "-l", "L", "https://192.168.1.20:8443/"],
                        capture_output=True, text=True, check=True).stdout.rstrip("\n")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-B", "-c", CHILD, str(PACKAGE_PARENT),
                             qr], stdin=secondary, stdout=secondary, stderr=subprocess.PIPE,
                            env=clean_env(TERM="vt220", LANG="C.UTF-8"), text=True)
    os.close(secondary)
    log = tmp_path / "serial.log"  # as QEMU logs the serial port, read by the image test's reader
    log.write_bytes(b"")
    screen = SerialScreen(log, tmp_path / "no-socket")

    def shows(text: str, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([primary], [], [], 0.1)[0]:
                with log.open("ab") as out:
                    out.write(os.read(primary, 65536))
            elif text in screen.text():
                return screen.lines()
        raise AssertionError(f"{text!r} never shown:\n" + screen.text())

    try:
        menu = "\n".join(shows("Power off"))
        assert consolemenu.TITLE in menu and all(label in menu for _, label in console.MAIN_ITEMS)
        os.write(primary, (consolemenu.CONNECT + "\r").encode())
        shown = shows(qr.splitlines()[-1])
        assert "API key:  nd-key" in shown[0]
        assert qr in "\n".join(shown)  # the code intact, not rewrapped
        os.write(primary, b"\r")
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None and proc.stderr.read().strip() == "CHOICE=2"
    finally:
        proc.kill()
        os.close(primary)
