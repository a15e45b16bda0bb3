"""status-page: keep the operator page's status (/run/neuraldrive/page/status.json) fresh.

The gateway serves the file behind the API key as /nd/status.json. It is what `neuraldrive status
--json` prints, rewritten atomically every NEURALDRIVE_STATUS_INTERVAL seconds by a unit that may
open the GPUs (nvidia-smi needs /dev/nvidia*): the console greeting's unit holds the API key and
gets no device access.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .common import ConfigError, Runner, Settings, atomic_write, fail, log, run_command
from .engine_state import ENGINE_TIMEOUT_S
from .healthcheck import Limits
from .ollama import Client
from .paths import GPU_ENV, RUN_DIR, STATE_DIR
from .status import Sources, collect

PROG = "status-page"
# The unit's RuntimeDirectory= (mode 0755, so the gateway's user may read it).
STATUS_JSON = f"{RUN_DIR}/page/status.json"
DEFAULT_INTERVAL_S = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write the appliance's status (engine, instances, each GPU's VRAM, loaded models, "
                    f"health, uptime, disk) as JSON to {STATUS_JSON} for the operator page, every "
                    f"NEURALDRIVE_STATUS_INTERVAL seconds (default {DEFAULT_INTERVAL_S}).")
    parser.add_argument("--output", type=Path, default=Path(STATUS_JSON), metavar="FILE",
                        help=f"file to write (default {STATUS_JSON}); '-' prints it once instead")
    parser.add_argument("--gpu-env", type=Path, default=Path(GPU_ENV), metavar="FILE",
                        help=f"GPU facts (default {GPU_ENV})")
    parser.add_argument("--once", action="store_true", help="write it once and exit")
    return parser


def sources(settings: Settings, gpu_env: Path, run: Runner) -> Sources:
    limits = Limits.from_settings(settings)
    return Sources(Client(settings.text("OLLAMA_HOST"), timeout=ENGINE_TIMEOUT_S), gpu_env, Path(STATE_DIR),
                   run, vram_warn=limits.vram_warn, disk_warn=limits.disk_warn, settings=settings)


def write_status(path: Path, src: Sources) -> bool:
    """The status, world-readable (no secret in it: the gateway, another user, serves it)."""
    try:
        atomic_write(path, json.dumps(collect(src).to_dict()), mode=0o644)
    except OSError as exc:
        log(f"cannot write {path}: {exc.strerror or exc}", "warning")
        return False
    return True


def main(argv: Sequence[str] | None = None, run: Runner = run_command) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(os.environ)
    try:
        interval = settings.integer("NEURALDRIVE_STATUS_INTERVAL", DEFAULT_INTERVAL_S, minimum=1)
        src = sources(settings, args.gpu_env, run)
    except ConfigError as exc:
        return fail(PROG, str(exc), 2)
    if str(args.output) == "-":
        print(json.dumps(collect(src).to_dict(), indent=2))
        return 0
    if args.once:
        return 0 if write_status(args.output, src) else 1
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"writing {args.output} every {interval} s")
    while not stop.is_set():
        write_status(args.output, src)
        stop.wait(interval)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
