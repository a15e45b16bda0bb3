"""`neuraldrive logs [UNIT] [-n N] [-f]`: the journal, of one unit or all, and where it is kept.

With a persistence partition the journal survives reboots (live-boot binds /var/log/journal from
it; at most 2 GiB, 100 MiB a file, 7 days); without one it is in RAM and gone at the next boot.
The first line, on stderr, says which, so piping the log stays clean.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .common import ConfigError

JOURNAL_DIR = "/var/log/journal"
UNIT_DIR = "/etc/systemd/system"
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.@\\-]*")


class LogsError(ConfigError):
    """Bad input (exit 2)."""


def unit_name(name: str, unit_dir: Path = Path(UNIT_DIR)) -> str:
    """A unit as given (`ssh`, `ssh.service`), or one of ours by its short name (`ollama` ->
    neuraldrive-ollama.service). Never an option: journalctl gets it as --unit=NAME."""
    if not _UNIT.fullmatch(name) or len(name) > 200:
        raise LogsError(f"{name!r}: not a unit name")
    if "." not in name:
        ours = f"neuraldrive-{name}.service"
        if not name.startswith("neuraldrive-") and (unit_dir / ours).exists():
            return ours
        return f"{name}.service"
    return name


def where_kept(journal_dir: str = JOURNAL_DIR, is_mount: Callable[[str], bool] = os.path.ismount) -> str:
    if is_mount(journal_dir):
        return "journal kept on the persistence partition (survives reboots; 7 days, 2 GiB at most)"
    return "journal in RAM only (no persistence partition): lost at the next boot"


def journal_argv(unit: str | None, lines: int, follow: bool) -> list[str]:
    argv = ["journalctl", "--no-pager", f"--lines={lines}"]
    if unit is not None:
        argv.append(f"--unit={unit}")
    if follow:
        argv.append("--follow")
    return argv


def add_parser(sub: argparse._SubParsersAction, handler: Callable[..., int]) -> None:  # type: ignore[type-arg]
    logs = sub.add_parser("logs", help="the journal (of one unit: ollama, caddy, firstboot, ssh, …); "
                                       "kept across reboots with a persistence partition")
    logs.add_argument("unit", nargs="?", help="a unit, or one of ours by its short name")
    logs.add_argument("-n", "--lines", type=int, default=100, help="last N lines (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.set_defaults(handler=handler)


def show(args: argparse.Namespace, say_err: Callable[[str], None] | None = None,
         call: Callable[[Sequence[str]], int] = subprocess.call, unit_dir: Path = Path(UNIT_DIR),
         is_mount: Callable[[str], bool] = os.path.ismount) -> int:
    """Run journalctl on the terminal (it pages nothing, follows with -f); its exit status is ours."""
    if args.lines < 0:
        raise LogsError(f"-n {args.lines}: give a number of lines >= 0")
    unit = None if args.unit is None else unit_name(args.unit, unit_dir)
    (say_err or (lambda text: print(text, file=sys.stderr, flush=True)))(
        f"# {where_kept(is_mount=is_mount)}")
    try:
        return call(journal_argv(unit, args.lines, args.follow))
    except KeyboardInterrupt:
        return 0
