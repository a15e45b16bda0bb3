"""Is the booted appliance serving? The gateway probe (an authenticated request through TLS) and the
API key read from the serial console (release images have no SSH to ask)."""

from __future__ import annotations

import re
import ssl
import time
import urllib.error
import urllib.request

from builder.errors import VMError
from builder.proof.consolemenu import api_key_on_console
from builder.vm.machine import VM
from builder.vm.screen import LOGIN_PROMPT, MENU_TITLE, SerialScreen


def gateway_ready(port: int, api_key: str) -> bool:
    """An authenticated /api/version through the gateway answers 200 (the device's own cert)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the device CA is checked by the image tests themselves
    request = urllib.request.Request(f"https://127.0.0.1:{port}/api/version",
                                     headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


_SERIAL_KEY = re.compile(r"API key:\s+(nd-[A-Za-z0-9_-]{32,})")


def api_key_from_serial(vm: VM, timeout: float) -> str:
    """The key as the console shows it (release images have no SSH to ask): the console menu's URL
    screen, or the greeting above the login prompt of an image built with console.menu: false."""
    screen = SerialScreen.of(vm)
    if screen.wait_for(MENU_TITLE, max(1.0, vm.started + timeout - time.monotonic()), LOGIN_PROMPT) == MENU_TITLE:
        return api_key_on_console(screen)
    deadline = vm.started + timeout
    while time.monotonic() < deadline:
        found = _SERIAL_KEY.findall(vm.serial_log.read_text(errors="replace"))
        if found:
            return str(found[-1])
        if not vm.alive():
            raise VMError(f"QEMU exited early; serial tail:\n{vm.serial_tail()}")
        time.sleep(1)
    raise VMError(f"no API key on the serial console within {timeout:.0f}s; tail:\n{vm.serial_tail()}")
