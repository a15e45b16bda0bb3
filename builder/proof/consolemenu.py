"""The console menu driven over the serial console as a person would: keys typed, the screen read
back (builder/vm/screen.py). The keys are the menu's own (neuraldrive/console.py MAIN_ITEMS; a unit
test keeps the two equal); each step waits for text only the next screen has."""

from __future__ import annotations

import re

from builder.errors import VMError
from builder.vm.screen import ENTER, MENU_TITLE, SerialScreen

__all__ = ["CONNECT", "CONNECT_DONE", "ENTER", "KEY_ON_SCREEN", "MODELS", "ROTATE", "SSH_KEY", "STATUS", "TITLE", "YES",
           "api_key_on_console", "back_to_menu", "choose"]

TITLE = MENU_TITLE
STATUS, CONNECT, ROTATE, MODELS, SSH_KEY = "1", "2", "3", "4", "5"
# The URL screen's last line: once it is shown, the key above it is whole.
CONNECT_DONE = "Enter: back to the menu."
# dialog's yes/no boxes default to No here; Tab moves to Yes.
YES = "\t" + ENTER
KEY_ON_SCREEN = re.compile(r"API key:\s+(nd-[A-Za-z0-9_-]{32,})")
STEP_TIMEOUT = 120.0


def choose(screen: SerialScreen, key: str, shows: str, timeout: float = STEP_TIMEOUT) -> str:
    """Pick a main-menu entry; the screen text once `shows` is on it."""
    if TITLE not in screen.text():
        # A step that failed earlier may have left a screen open: Esc leaves it (dialog's cancel).
        screen.send("\x1b")
    screen.wait_for(TITLE, timeout)
    screen.send(key + ENTER)
    screen.wait_for(shows, timeout)
    return screen.text()


def back_to_menu(screen: SerialScreen, timeout: float = STEP_TIMEOUT) -> None:
    """Enter leaves a text screen (its only button) and the URL screen."""
    screen.send(ENTER)
    screen.wait_for(TITLE, timeout)


def api_key_on_console(screen: SerialScreen, timeout: float = STEP_TIMEOUT) -> str:
    """The API key where the menu shows it (the URL screen), back at the menu afterwards."""
    found = KEY_ON_SCREEN.search(choose(screen, CONNECT, CONNECT_DONE, timeout))
    if found is None:
        raise VMError(f"the URL screen shows no API key:\n{screen.text()}")
    back_to_menu(screen, timeout)
    return found[1]
