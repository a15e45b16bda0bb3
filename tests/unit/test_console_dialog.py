"""The console program and its dialog screens drawn for real in a pseudo-terminal, read back with a terminal
emulator (pyte) as the image test reads the serial console."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.proof import consolemenu
from tests.fixtures.gpu import PACKAGE_PARENT, clean_env, lib, program

console = lib("console")


def test_console_needs_a_terminal() -> None:
    result = subprocess.run([*program("usr/lib/neuraldrive/console")], env=clean_env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and result.stderr == "console: needs a terminal (it is the menu on tty1 and ttyS0)\n"
    helped = subprocess.run([*program("usr/lib/neuraldrive/console"), "--help"], env=clean_env(),
                            capture_output=True, text=True, timeout=30, check=False)
    assert helped.returncode == 0 and "instead of a" in helped.stdout


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
