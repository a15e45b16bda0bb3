"""console: the menu the person at the machine gets on tty1 and the serial console (no login prompt).

Physical presence is the credential (docs/appliance.md, "The console menu"): the menu shows the
status, the URL with the API key and a QR code, rotates the key, lists, pulls and removes models,
adds an SSH public key, shows the logs and reboots or powers off. It offers no shell. Each screen
is drawn by console_dialog (Debian's `dialog`); this module is the menu's logic against the Screen
protocol, so tests drive it with a fake screen.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import console_ssh, logs, neuraldrive
from .appliance import api_urls, read_api_key
from .common import Runner, human_bytes, log, run_command
from .context import SettingsContext
from .ollama import EngineError, entry_name
from .paths import ADMIN_USER, API_KEY_FILE

TITLE = "NeuralDrive console"
# (key, label): the key selects the entry (dialog jumps to the item whose tag is typed). The image
# test types these keys (builder/proof/consolemenu.py, checked against this list by a unit test).
MAIN_ITEMS = (
    ("1", "Status"),
    ("2", "URL, API key and QR code"),
    ("3", "Rotate the API key"),
    ("4", "Models: list, pull, remove"),
    ("5", "Add an SSH public key"),
    ("6", "Logs"),
    ("7", "Reboot"),
    ("8", "Power off"),
)
# (key, label, unit; None: the whole journal), as `neuraldrive logs UNIT` shows them
LOG_ITEMS = (
    ("1", "Everything", None),
    ("2", "Engine", "neuraldrive-ollama.service"),
    ("3", "Gateway", "neuraldrive-caddy.service"),
    ("4", "API key checks", "neuraldrive-gateway-auth.service"),
    ("5", "First boot (secrets, keys)", "neuraldrive-firstboot.service"),
    ("6", "Health check", "neuraldrive-healthcheck.service"),
    ("7", "SSH", "ssh.service"),
)
LOG_LINES = 300
PULL_KEY = "p"
# Ollama's model names (types/model/name.go): host/namespace/model:tag of these characters.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,199}")


class Screen(Protocol):
    """What the menu draws; console_dialog.DialogScreen on the device, a fake in the tests."""

    def menu(self, title: str, text: str, items: Sequence[tuple[str, str]]) -> str | None: ...
    def text(self, title: str, body: str) -> None: ...
    def yesno(self, title: str, question: str) -> bool: ...
    def ask(self, title: str, prompt: str) -> str | None: ...
    def progress(self, title: str, steps: Iterable[tuple[int, str]]) -> None: ...
    def plain(self, body: str) -> None: ...


@dataclass
class Device(SettingsContext):
    """What the menu touches outside itself, so tests can point it elsewhere."""

    run: Runner = run_command
    key_file: Path = Path(API_KEY_FILE)
    keys_file: Path = Path(console_ssh.ADMIN_KEYS)
    # More of neuraldrive.Context's fields (tests: euid, key_group).
    admin_options: dict[str, Any] = field(default_factory=dict)

    def urls(self) -> tuple[str, str]:
        return api_urls(self.settings.integer("NEURALDRIVE_GATEWAY_PORT", 8443, minimum=1), self.run)

    def admin(self, argv: Sequence[str]) -> tuple[int, str]:
        """`neuraldrive ARGV` in-process, the command a shell would run: (exit status, what it
        printed on stdout and stderr)."""
        out = io.StringIO()
        ctx = neuraldrive.Context(self.settings, run=self.run, out=out, key_file=self.key_file,
                                  **self.admin_options)
        with contextlib.redirect_stderr(out):
            try:
                code = neuraldrive.main(list(argv), ctx)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
        return code, out.getvalue()


def services_last(text: str) -> str:
    """`neuraldrive status` with its block of unit states (a line each) moved to the end: on a
    24-row console the engine, models and health come first."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Services")), None)
    if start is None:
        return text
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * 10):
        end += 1
    return "\n".join([*lines[:start], *lines[end:], *lines[start:end]]) + "\n"


def show_status(screen: Screen, device: Device) -> None:
    code, output = device.admin(["status"])
    screen.text("Status" + ("" if code == 0 else f" (neuraldrive status: exit {code})"), services_last(output))


def qr_code(url: str, run: Runner) -> str:
    """The URL as a QR code of Unicode half blocks (two rows a line: fits 24 rows with the text)."""
    result = run(["qrencode", "-t", "UTF8", "-m", "2", "-l", "L", "--", url])
    return result.stdout.rstrip("\n") if result.ok else f"(no QR code: {result.reason()})"


def connect_screen(device: Device) -> str:
    by_address, by_name = device.urls()
    try:
        key = read_api_key(device.key_file)
    except OSError:
        key = "not created yet (first boot still running?)"
    # 24 rows on a serial terminal: 4 lines of text, the QR code (15 rows for an IPv4 URL), 1 line.
    lines = [f"API URL:  {by_address}"]
    if by_name != by_address:
        lines.append(f"      or  {by_name}")
    lines += [f"API key:  {key}", "(the Bearer key for the Ollama API and the OpenAI-compatible /v1 API)",
              qr_code(by_address, device.run), "The QR code is the API URL. Enter: back to the menu."]
    return "\n".join(lines)


def rotate_key(screen: Screen, device: Device) -> None:
    if not screen.yesno("Rotate the API key", "Make a new API key?\n\nEvery client using the "
                        "current key is refused from now on; the page and this console show the new one."):
        return
    code, output = device.admin(["key", "rotate"])
    screen.text("API key rotated" if code == 0 else "API key NOT rotated", output)


def pull_steps(events: Iterable[dict[str, object]]) -> Iterator[tuple[int, str]]:
    """Ollama's pull progress as (percent over all layers, line): each layer's digest has its own
    total and completed (api.ProgressResponse)."""
    layers: dict[str, tuple[int, int]] = {}
    for event in events:
        digest = str(event.get("digest") or "")
        total = int(str(event.get("total") or 0))
        if digest and total:
            layers[digest] = (int(str(event.get("completed") or 0)), total)
        done = sum(c for c, _ in layers.values())
        whole = sum(t for _, t in layers.values())
        percent = min(100, done * 100 // whole) if whole else 0
        size = f" ({human_bytes(done)} of {human_bytes(whole)})" if whole else ""
        yield (100 if event.get("status") == "success" else percent), f"{event.get('status', '')}{size}"


def pull_model(screen: Screen, device: Device) -> None:
    name = (screen.ask("Pull a model", "Model to pull from the registry (e.g. llama3.2:1b):") or "").strip()
    if not name:
        return
    if not _MODEL.fullmatch(name):
        screen.text("Pull a model", f"{name!r} is not a model name")
        return
    last: list[str] = []

    def steps() -> Iterator[tuple[int, str]]:
        for percent, line in pull_steps(device.client.pull(name)):
            last[:] = [line]
            yield percent, line

    try:
        screen.progress(f"Pulling {name}", steps())
    except EngineError as exc:
        screen.text("Pull failed", str(exc))
        return
    # The engine ends a pull it completed with status "success" (server/images.go PullModel).
    done = bool(last) and last[0].startswith("success")
    screen.text("Pull a model", f"pulled {name}" if done else
                f"pull of {name} ended: {last[0] if last else 'no answer'}")


def manage_models(screen: Screen, device: Device) -> None:
    while True:
        try:
            models = sorted(device.client.tags(), key=entry_name)
            loaded = {entry_name(e) for e in device.client.ps()}
        except EngineError as exc:
            screen.text("Models", f"{exc}\n\nIs the engine running? See Status and Logs.")
            return
        items = [(PULL_KEY, "Pull a model ...")]
        items += [(str(i), f"{entry_name(m):<40} {human_bytes(int(str(m.get('size') or 0))):>10}"
                           f"{'  loaded' if entry_name(m) in loaded else ''}")
                  for i, m in enumerate(models, 1)]
        text = f"{len(models)} model(s) on this appliance. Choose one to remove it."
        choice = screen.menu("Models", text, items)
        if choice is None:
            return
        if choice == PULL_KEY:
            pull_model(screen, device)
            continue
        name = entry_name(models[int(choice) - 1])
        if screen.yesno("Remove a model", f"Remove {name} from this appliance's disk?"):
            try:
                device.client.delete(name)
                screen.text("Remove a model", f"removed {name}")
            except EngineError as exc:
                screen.text("Remove a model", f"{name} not removed: {exc}")


def add_ssh_key(screen: Screen, device: Device) -> None:
    line = screen.ask("Add an SSH public key", "One OpenSSH public key (ssh-ed25519 AAAA... comment). "
                      f"It lets its owner log in over SSH as the administrator ({ADMIN_USER}).")
    if line is None or not line.strip():
        return
    try:
        message = console_ssh.add_key(line, device.keys_file, device.run)
    except console_ssh.KeyRefusedError as exc:
        message = f"not added: {exc}"
    screen.text("Add an SSH public key", message)


def show_logs(screen: Screen, device: Device) -> None:
    choice = screen.menu("Logs", logs.where_kept(), [(k, label) for k, label, _ in LOG_ITEMS])
    if choice is None:
        return
    _, label, unit = next(item for item in LOG_ITEMS if item[0] == choice)
    argv = logs.journal_argv(None if unit is None else logs.unit_name(unit), LOG_LINES, follow=False)
    result = device.run(argv)
    body = result.stdout if result.ok or result.stdout else f"journalctl: {result.reason()}"
    screen.text(f"Logs: {label} (last {LOG_LINES} lines)", body or "(nothing logged)")


def power(screen: Screen, device: Device, verb: str) -> None:
    if not screen.yesno(verb.capitalize(), f"{verb.capitalize()} the appliance now? "
                        "Running requests are cut off."):
        return
    result = device.run(["systemctl", verb])
    if not result.ok:
        screen.text(verb.capitalize(), f"systemctl {verb} failed: {result.reason()}")


def main_menu(screen: Screen, device: Device) -> None:
    """One pass: the main menu and the chosen screen."""
    by_address, _ = device.urls()
    choice = screen.menu(TITLE, f"API URL: {by_address}   (no login here: see the manual)", MAIN_ITEMS)
    actions: dict[str, Callable[[], None]] = {
        "1": lambda: show_status(screen, device),
        "2": lambda: screen.plain(connect_screen(device)),
        "3": lambda: rotate_key(screen, device),
        "4": lambda: manage_models(screen, device),
        "5": lambda: add_ssh_key(screen, device),
        "6": lambda: show_logs(screen, device),
        "7": lambda: power(screen, device, "reboot"),
        "8": lambda: power(screen, device, "poweroff"),
    }
    if choice in actions:
        actions[choice]()


def main(argv: Sequence[str] | None = None) -> int:
    from .console_dialog import DialogScreen, prepare_terminal

    argparse.ArgumentParser(prog="console", description=(
        "The console menu (run by neuraldrive-console@TTY.service on tty1 and ttyS0 instead of a "
        "login prompt): status, URL and API key with a QR code, key rotation, models, SSH keys, "
        "logs, reboot and power off.")).parse_args(argv)
    if not sys.stdin.isatty():
        print("console: needs a terminal (it is the menu on tty1 and ttyS0)", file=sys.stderr)
        return 2
    # No way out of the menu by a key: Ctrl-C returns to it, Ctrl-Z and Ctrl-\ do nothing.
    for sig in (signal.SIGTSTP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    prepare_terminal(sys.stdin.fileno())
    screen, device = DialogScreen(), Device.from_system()
    while True:
        try:
            main_menu(screen, device)
        except KeyboardInterrupt:
            continue
        except Exception as exc:
            log(f"console: {type(exc).__name__}: {exc}", "error", sys.stderr)
            screen.text("Error", f"{type(exc).__name__}: {exc}")
