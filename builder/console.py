"""Console output for long work: a start and end line with timing per step, and one-line progress.

Progress redraws one line on a terminal and prints a line every few seconds otherwise (CI logs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

_VERBOSE = False


def set_verbose(value: bool) -> None:
    global _VERBOSE
    _VERBOSE = value


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def debug(message: str) -> None:
    if _VERBOSE:
        print(f"  {message}", file=sys.stderr, flush=True)


@contextmanager
def complete_step(title: str) -> Iterator[dict[str, float]]:
    """Print `‣ title…`, run the block, print its duration; yields a dict receiving `seconds`."""
    info(f"‣ {title}…")
    timing: dict[str, float] = {}
    start = time.monotonic()
    try:
        yield timing
    finally:
        timing["seconds"] = round(time.monotonic() - start, 1)
    info(f"  done in {format_seconds(timing['seconds'])}")


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f}s"


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


class ProgressLine:
    """A single status line: rewritten in place on a TTY, throttled plain lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self._last = 0.0
        self._shown = ""

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\033[K  " + text)
        else:
            self.stream.write("  " + text + "\n")
        self.stream.flush()
        self._shown = text

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def download_status(done: int, total: int | None, started: float) -> str:
    elapsed = max(time.monotonic() - started, 1e-3)
    rate = done / elapsed
    if total:
        eta = (total - done) / rate if rate > 0 else 0
        return (
            f"{format_bytes(done)} / {format_bytes(total)} ({100 * done / total:.0f}%) "
            f"{format_bytes(rate)}/s ETA {format_seconds(eta)}"
        )
    return f"{format_bytes(done)} {format_bytes(rate)}/s"
