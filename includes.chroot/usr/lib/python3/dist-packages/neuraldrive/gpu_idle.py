"""gpu-idle: unload models nobody has used for NEURALDRIVE_IDLE_TIMEOUT seconds; keep pinned ones.

/api/ps has no "last used" field, but every request moves a model's expires_at, so a changed
expires_at between two polls means "used". Two kinds of model stay loaded:
- one loaded with keep_alive < 0: Ollama shows it expiring ~292 years ahead (the largest Go
  duration), and keeps that keep_alive for every later request that omits keep_alive (seed 002);
- one named in NEURALDRIVE_IDLE_PINNED: this manager loads it with keep_alive -1 whenever /api/ps
  answers without it (first boot, after an engine restart or crash, after an operator's unload),
  or shows it with a finite keep_alive. The manager, not an ExecStartPost= of the engine, does
  this: it already polls the engine, a load can take minutes (the engine's start would wait on
  it), it catches every way a model leaves (not only restarts), and it runs without privilege.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from .common import ConfigError, Settings, fail, human_bytes, log
from .ollama import UNLOAD_WAIT_S, Client, EngineError, canonical_name, entry_name

PROG = "gpu-idle"
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*(:[A-Za-z0-9._-]{1,128})?")


class Engine(Protocol):
    url: str

    def ps(self) -> list[dict[str, Any]]: ...

    def request_unload(self, model: str) -> None: ...

    def load(self, model: str) -> None: ...

    def wait_gone(self, models: list[str], wait: float = ..., poll: float = ...,
                  sleep: Callable[[float], object] = ...,
                  clock: Callable[[], float] = ...) -> list[str]: ...


# keep_alive < 0 is Go's largest duration (~292 years); anything a century ahead counts as that.
FOREVER_YEARS = 100
# A pinned model that failed to load is tried again after this long, not every poll.
PIN_RETRY_S = 300.0


def loaded_forever(expires_at: str, year: int) -> bool:
    """True for the expires_at of a model loaded with keep_alive < 0 (RFC 3339, year first)."""
    try:
        return int(expires_at[:4]) >= year + FOREVER_YEARS
    except ValueError:
        return False


@dataclass
class Seen:
    expires_at: str
    last_used: float
    size: int
    size_vram: int
    forever: bool = False


class IdleManager:
    def __init__(self, engine: Engine, timeout: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep,
                 unload_wait: float = UNLOAD_WAIT_S, pinned: Sequence[str] = (),
                 year: Callable[[], int] = lambda: time.gmtime().tm_year) -> None:
        self.engine = engine
        self.timeout = timeout
        self.clock = clock
        self.sleep = sleep
        self.unload_wait = unload_wait
        self.pinned = tuple(dict.fromkeys(canonical_name(m) for m in pinned))
        self.year = year
        self.seen: dict[str, Seen] = {}
        self.engine_down = False
        self.pin_retry: dict[str, float] = {}  # pinned model -> when to try loading it again

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
        now, year = self.clock(), self.year()
        current: dict[str, Seen] = {}
        for entry in models:
            name = entry_name(entry)
            if not name:
                continue
            expires = str(entry.get("expires_at", ""))
            before = self.seen.get(name)
            # New to us, or a request moved its expiry: in use now.
            used = before.last_used if before and before.expires_at == expires else now
            current[name] = Seen(expires, used, _int(entry.get("size")), _int(entry.get("size_vram")),
                                 loaded_forever(expires, year))
        self.seen = current
        unloaded = [name for name, seen in sorted(current.items())
                    if now - seen.last_used >= self.timeout and not self.stays(name, seen)
                    and self._unload(name, seen, now)]
        self._load_pinned(now)
        return unloaded

    def stays(self, name: str, seen: Seen) -> bool:
        return seen.forever or canonical_name(name) in self.pinned

    def _load_pinned(self, now: float) -> None:
        """Load (keep_alive -1) each pinned model /api/ps does not show as loaded for good."""
        loaded = {canonical_name(name) for name, seen in self.seen.items() if seen.forever}
        for model in self.pinned:
            if model in loaded or now < self.pin_retry.get(model, now):
                continue
            try:
                self.engine.load(model)
            except EngineError as exc:
                self.pin_retry[model] = now + PIN_RETRY_S
                log(f"could not load pinned model {model}: {exc}; trying again in {PIN_RETRY_S:.0f} s",
                    "warning")
                continue
            self.pin_retry.pop(model, None)
            log(f"loaded pinned model {model} (keep_alive -1)")

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


def pinned_models(settings: Settings) -> tuple[str, ...]:
    names = settings.words("NEURALDRIVE_IDLE_PINNED")
    for name in names:
        if not _MODEL.fullmatch(name):
            raise ConfigError(f"NEURALDRIVE_IDLE_PINNED: {name!r} is not a model name (name[:tag])")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Unload Ollama models idle for NEURALDRIVE_IDLE_TIMEOUT seconds (default "
                    "300), checking GET /api/ps every NEURALDRIVE_IDLE_INTERVAL seconds "
                    "(default 30), except models loaded with keep_alive -1 and those named in "
                    "NEURALDRIVE_IDLE_PINNED, which are loaded (keep_alive -1) whenever they are "
                    "missing. Engine address from OLLAMA_HOST.")
    parser.add_argument("--once", action="store_true",
                        help="one pass, then exit (1 if the engine did not answer)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(os.environ)
    try:
        timeout = settings.integer("NEURALDRIVE_IDLE_TIMEOUT", 300, minimum=1)
        interval = settings.integer("NEURALDRIVE_IDLE_INTERVAL", 30, minimum=1)
        pinned = pinned_models(settings)
    except ConfigError as exc:
        return fail(PROG, str(exc), 2)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine = Client(settings.text("OLLAMA_HOST"))
    # Waiting for an unload also ends early on SIGTERM.
    manager = IdleManager(engine, timeout, sleep=stop.wait, pinned=pinned)
    if args.once:
        manager.poll()
        return 1 if manager.engine_down else 0
    kept = f"; keeping {', '.join(manager.pinned)} loaded" if pinned else ""
    log(f"unloading models idle for {timeout} s; checking {engine.url} every {interval} s{kept}")
    while not stop.is_set():
        manager.poll()
        stop.wait(interval)
    log("stopping")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
