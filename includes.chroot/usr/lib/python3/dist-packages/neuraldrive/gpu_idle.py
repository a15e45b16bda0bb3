"""gpu-idle: unload models nobody has used for NEURALDRIVE_IDLE_TIMEOUT seconds.

Ollama's own keep_alive does not cover models loaded with keep_alive -1 ("forever"), which
would otherwise hold VRAM until reboot. /api/ps has no "last used" field, but every request
moves a model's expires_at, so a changed expires_at between two polls means "used".
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from .common import ConfigError, Settings, fail, human_bytes, log
from .ollama import UNLOAD_WAIT_S, Client, EngineError, entry_name

PROG = "gpu-idle"


class Engine(Protocol):
    url: str

    def ps(self) -> list[dict[str, Any]]: ...

    def request_unload(self, model: str) -> None: ...

    def wait_gone(self, models: list[str], wait: float = ..., poll: float = ...,
                  sleep: Callable[[float], object] = ...,
                  clock: Callable[[], float] = ...) -> list[str]: ...


@dataclass
class Seen:
    expires_at: str
    last_used: float
    size: int
    size_vram: int


class IdleManager:
    def __init__(self, engine: Engine, timeout: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep,
                 unload_wait: float = UNLOAD_WAIT_S) -> None:
        self.engine = engine
        self.timeout = timeout
        self.clock = clock
        self.sleep = sleep
        self.unload_wait = unload_wait
        self.seen: dict[str, Seen] = {}
        self.engine_down = False

    def poll(self) -> list[str]:
        """One pass: note which models were used, unload the idle ones; returns those unloaded."""
        try:
            models = self.engine.ps()
        except EngineError as exc:
            if not self.engine_down:  # once per outage, not every interval
                log(f"{exc}; will keep checking", "warning")
                self.engine_down = True
            return []
        if self.engine_down:
            log(f"engine answering again at {self.engine.url}")
            self.engine_down = False
        now = self.clock()
        current: dict[str, Seen] = {}
        for entry in models:
            name = entry_name(entry)
            if not name:
                continue
            expires = str(entry.get("expires_at", ""))
            before = self.seen.get(name)
            # New to us, or a request moved its expiry: in use now.
            used = before.last_used if before and before.expires_at == expires else now
            current[name] = Seen(expires, used, _int(entry.get("size")), _int(entry.get("size_vram")))
        self.seen = current
        return [name for name, seen in sorted(current.items())
                if now - seen.last_used >= self.timeout and self._unload(name, seen, now)]

    def _unload(self, name: str, seen: Seen, now: float) -> bool:
        idle = now - seen.last_used
        try:
            self.engine.request_unload(name)
            left = self.engine.wait_gone([name], self.unload_wait, sleep=self.sleep,
                                         clock=self.clock)
        except EngineError as exc:
            log(f"could not unload {name}: {exc}", "warning")
            return False
        if left:
            # Ollama lets a running request finish first and unloads after it; try again
            # after another full idle period rather than every poll.
            seen.last_used = self.clock()
            log(f"asked {name} to unload, but it is still loaded after {self.unload_wait:g} s "
                "(probably still answering a request)", "warning")
            return False
        self.seen.pop(name, None)
        if seen.size_vram:
            freed = f"freed {human_bytes(seen.size_vram)} of VRAM"
        else:
            freed = f"freed {human_bytes(seen.size)} of RAM; it was not on a GPU"
        log(f"unloaded {name} after {idle:.0f} s idle ({freed})")
        return True


def _int(value: object) -> int:
    """A size from the API; anything odd counts as 0 rather than stopping the manager."""
    if isinstance(value, (int, float, str)):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Unload Ollama models idle for NEURALDRIVE_IDLE_TIMEOUT seconds (default "
                    "300), checking GET /api/ps every NEURALDRIVE_IDLE_INTERVAL seconds "
                    "(default 30); also models loaded with keep_alive -1. Engine address from "
                    "OLLAMA_HOST.")
    parser.add_argument("--once", action="store_true",
                        help="one pass, then exit (1 if the engine did not answer)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(os.environ)
    try:
        timeout = settings.integer("NEURALDRIVE_IDLE_TIMEOUT", 300, minimum=1)
        interval = settings.integer("NEURALDRIVE_IDLE_INTERVAL", 30, minimum=1)
    except ConfigError as exc:
        return fail(PROG, str(exc), 2)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine = Client(settings.text("OLLAMA_HOST"))
    # Waiting for an unload also ends early on SIGTERM.
    manager = IdleManager(engine, timeout, sleep=stop.wait)
    if args.once:
        manager.poll()
        return 1 if manager.engine_down else 0
    log(f"unloading models idle for {timeout} s; checking {engine.url} every {interval} s")
    while not stop.is_set():
        manager.poll()
        stop.wait(interval)
    log("stopping")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
