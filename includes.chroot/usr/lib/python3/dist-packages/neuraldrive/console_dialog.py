"""The console menu's screens, drawn by Debian's `dialog` (ncurses): it works on a Linux VT and on a
serial line alike (TERM=linux or vt220, redrawn whole on every screen), and each screen is one
process whose answer comes back on a pipe, so nothing of the menu's state lives in the terminal."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterable, Sequence
from pathlib import Path

DIALOG = "dialog"
BACKTITLE = "NeuralDrive"
# A serial line has no size (TIOCGWINSZ gives 0x0): the size every serial terminal has.
SERIAL_SIZE = (24, 80)
# Long enough for an RSA 16384-bit public key (console_ssh.MAX_LINE).
MAX_INPUT = 16 * 1024
CLEAR = "\033[H\033[2J"


def prepare_terminal(fd: int) -> None:
    """Give a terminal without a size the 80x24 dialog lays its screens out for."""
    try:
        rows, cols = termios.tcgetwinsize(fd)
        if rows == 0 or cols == 0:
            termios.tcsetwinsize(fd, SERIAL_SIZE)
    except (OSError, termios.error):
        pass


class DialogScreen:
    """console.Screen on the terminal this process has (stdin and stdout)."""

    def __init__(self, dialog: str = DIALOG) -> None:
        self.dialog = dialog

    def _run(self, title: str, args: Sequence[str], stdin: int | None = None) -> tuple[int, str]:
        """dialog's exit status (0 OK/Yes, 1 Cancel/No, 255 Esc) and its answer (from fd 3)."""
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.run(
                [self.dialog, "--backtitle", BACKTITLE, "--no-mouse", "--output-fd", str(write_end),
                 "--title", title, *args],
                pass_fds=(write_end,), check=False, stdin=stdin)
        finally:
            os.close(write_end)
        with os.fdopen(read_end, encoding="utf-8", errors="replace") as answer:
            return proc.returncode, answer.read()

    def menu(self, title: str, text: str, items: Sequence[tuple[str, str]]) -> str | None:
        flat = [part for item in items for part in item]
        code, answer = self._run(title, ["--ok-label", "Select", "--cancel-label", "Back",
                                         "--menu", text, "0", "0", "0", *flat])
        return answer.strip() if code == 0 and answer.strip() else None

    def text(self, title: str, body: str) -> None:
        with tempfile.TemporaryDirectory(prefix="nd-console-") as tmp:
            path = Path(tmp) / "text"
            path.write_text(body if body.endswith("\n") else body + "\n", encoding="utf-8")
            self._run(title, ["--exit-label", "Back", "--textbox", str(path), "0", "0"])

    def yesno(self, title: str, question: str) -> bool:
        return self._run(title, ["--defaultno", "--yesno", question, "0", "0"])[0] == 0

    def ask(self, title: str, prompt: str) -> str | None:
        code, answer = self._run(title, ["--max-input", str(MAX_INPUT), "--inputbox", prompt, "0", "76"])
        return answer if code == 0 else None

    def progress(self, title: str, steps: Iterable[tuple[int, str]]) -> None:
        """dialog --gauge reads "XXX / percent / text / XXX" blocks on its stdin."""
        proc = subprocess.Popen([self.dialog, "--backtitle", BACKTITLE, "--title", title,
                                 "--gauge", "", "8", "76", "0"], stdin=subprocess.PIPE, text=True)
        feed = proc.stdin
        assert feed is not None
        try:
            for percent, line in steps:
                with contextlib.suppress(BrokenPipeError):
                    feed.write(f"XXX\n{percent}\n{line}\nXXX\n")
                    feed.flush()
        finally:  # EOF ends the gauge, also when the steps failed
            with contextlib.suppress(BrokenPipeError):
                feed.close()
            proc.wait()

    def plain(self, body: str) -> None:
        """The whole screen as text (a QR code drawn in half blocks must not be rewrapped), until Enter."""
        sys.stdout.write(CLEAR + body + "\n")
        sys.stdout.flush()
        sys.stdin.readline()
