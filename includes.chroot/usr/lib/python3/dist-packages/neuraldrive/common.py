"""What every in-image program shares: settings, logging, commands, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# syslog priorities journald understands as a "<N>" line prefix on a service's stdout.
_PRIORITY = {"error": 3, "warning": 4, "info": 6}


class ConfigError(Exception):
    """A setting has a value the program cannot use; the message names it."""


@dataclass(frozen=True)
class CmdResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def reason(self) -> str:
        """The first line of the command's complaint, for a one-line log entry."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text[0] if text else f"exit status {self.returncode}"


Runner = Callable[[Sequence[str]], CmdResult]


def run_command(argv: Sequence[str], timeout: float = 60.0) -> CmdResult:
    """Run a command without a shell; a missing program or a hang becomes a result, not a crash."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return CmdResult(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CmdResult(124, "", f"{argv[0]}: no answer after {timeout:g} s")
    except OSError as exc:
        return CmdResult(126, "", f"{argv[0]}: {exc.strerror}")
    return CmdResult(proc.returncode, proc.stdout, proc.stderr)


def _stdout_is_journal(stream: TextIO) -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode when stdout goes to the journal."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def log(message: str, level: str = "info", stream: TextIO | None = None) -> None:
    """One line per event; under systemd the journal gets the right priority too."""
    out = stream or sys.stdout
    prefix = f"<{_PRIORITY[level]}>" if _stdout_is_journal(out) else ""
    print(f"{prefix}{message}", file=out, flush=True)


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, optional quotes)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_env_file(path: str | Path) -> dict[str, str]:
    """A missing or unreadable file contributes nothing (like EnvironmentFile=-)."""
    try:
        return parse_env(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}


def load_conf_files(files: Iterable[str | Path], environ: Mapping[str, str]) -> dict[str, str]:
    """For programs not started by systemd: the config files in order, then the environment."""
    merged: dict[str, str] = {}
    for path in files:
        merged.update(read_env_file(path))
    merged.update(environ)
    return merged


class Settings:
    """Typed access to KEY=VALUE settings with defaults and one-line errors."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def text(self, key: str, default: str = "") -> str:
        return self._values.get(key, "").strip() or default

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        raw = self._values.get(key, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a whole number") from None
        if value < minimum:
            raise ConfigError(f"{key}={value} must be at least {minimum}")
        return value

    def words(self, key: str) -> tuple[str, ...]:
        return tuple(self._values.get(key, "").replace(",", " ").split())

    def items(self) -> list[tuple[str, str]]:
        return list(self._values.items())


def atomic_write(path: str | Path, data: str, mode: int = 0o644, gid: int | None = None) -> None:
    """Readers see the old file or the new one, never half of one (temp file + rename)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            if gid is not None:
                os.fchown(handle.fileno(), -1, gid)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB': sizes as people read them in a log line."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def fail(program: str, message: str, code: int = 1) -> int:
    """The one-line error every program prints for an expected failure."""
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    return code
