"""The guest's serial console as a person at it sees it: everything QEMU logged from the serial port,
fed through a terminal emulator (pyte) the size the console menu lays itself out for, and keys
typed back through the serial socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import VMError

if TYPE_CHECKING:
    from builder.vm.machine import VM

ROWS, COLS = 24, 80  # the size the console program gives a serial line (console_dialog.SERIAL_SIZE)
# The console's first screen: the menu's title, or the login prompt of an image built with
# console.menu: false (getty on ttyS0).
MENU_TITLE = "NeuralDrive console"
LOGIN_PROMPT = "login:"
ENTER = "\r"


def type_keys(serial_socket: Path, text: str) -> None:
    """Send keystrokes to the guest's serial console, at typing speed: QEMU takes from the socket
    only what the emulated UART's 16-byte FIFO can hold and drops the rest when the client
    hangs up, so a burst followed by close loses keys."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(serial_socket))
        for char in text:
            sock.sendall(char.encode())
            time.sleep(0.05)
        time.sleep(1.0)  # let the guest drain the FIFO before the hang-up


class SerialScreen:
    """What the serial terminal shows now (the log is read on from where it was last read)."""

    def __init__(self, serial_log: Path, serial_socket: Path, alive: Callable[[], bool] = lambda: True) -> None:
        import pyte  # a test-host requirement (requirements.txt), not the builder's

        self.serial_log, self.serial_socket, self.alive = serial_log, serial_socket, alive
        class Screen(pyte.Screen):
            # The serial line carries more than the menu (kernel and systemd lines, dialog's own
            # sequences): a cursor move with extra parameters must not end the reading (pyte
            # 0.8.2 raised TypeError on one in the image run).
            def cursor_position(self, line: int | None = None, column: int | None = None, *_: Any,
                                **__: Any) -> None:
                super().cursor_position(line, column)

        self.screen: Any = Screen(COLS, ROWS)
        self.stream: Any = pyte.ByteStream(self.screen)
        self.offset = 0

    @classmethod
    def of(cls, vm: VM) -> SerialScreen:
        return cls(vm.serial_log, vm.serial_socket, vm.alive)

    def lines(self) -> list[str]:
        try:
            with self.serial_log.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
        except OSError:
            data = b""
        self.offset += len(data)
        self.stream.feed(data)
        return [str(line).rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())

    def wait_for(self, wanted: str, timeout: float, *others: str) -> str:
        """Wait until `wanted` (or one of `others`) is on the screen; returns the one that is."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.text()
            for text in (wanted, *others):
                if text in shown:
                    return text
            if not self.alive():
                raise VMError(f"QEMU exited while waiting for {wanted!r} on the serial console:\n{shown}")
            if time.monotonic() > deadline:
                raise VMError(f"no {wanted!r} on the serial console within {timeout:.0f}s; it shows:\n{shown}")
            time.sleep(0.5)

    def send(self, keys: str) -> None:
        type_keys(self.serial_socket, keys)


def wait_for_console(vm: VM, timeout: float) -> float:
    """Seconds from QEMU start until the console's first screen (the menu, or a login prompt)."""
    SerialScreen.of(vm).wait_for(MENU_TITLE, max(1.0, vm.started + timeout - time.monotonic()), LOGIN_PROMPT)
    return vm.elapsed()
