"""healthcheck: is the engine answering, is the GPU's memory full, is the disk full?

Run by a timer as an unprivileged user. An engine that does not answer gets restarted (it can
be running yet hung, e.g. after a GPU fault): the check exits 1, and its unit's OnFailure=
runs `healthcheck --restart-engine` as root in a unit that can do nothing else. Full VRAM or
disk is reported but left alone.
Exit status: 0 healthy, 1 engine failed, 2 bad settings, 3 warnings only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import ConfigError, Runner, Settings, fail, log, run_command
from .gpu import read_gpu_state
from .ollama import Client, EngineError
from .paths import ENGINE_UNIT, GPU_ENV, STATE_DIR

PROG = "healthcheck"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WARNING = 0, 1, 2, 3
NVIDIA_QUERY = ["nvidia-smi", "--query-gpu=memory.used,memory.total",
                "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warning | error
    message: str


@dataclass(frozen=True)
class Limits:
    api_timeout: int
    vram_warn: int
    disk_warn: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.integer("NEURALDRIVE_HEALTH_API_TIMEOUT", 10, minimum=1),
                   settings.integer("NEURALDRIVE_HEALTH_VRAM_WARN_PERCENT", 98, minimum=1),
                   settings.integer("NEURALDRIVE_HEALTH_DISK_WARN_PERCENT", 90, minimum=1))


def check_engine(client: Client, timeout: int,
                 clock: Callable[[], float] = time.monotonic) -> Finding:
    start = clock()
    try:
        version = client.version(timeout=timeout)
    except EngineError as exc:
        return Finding("error", f"engine: no valid answer from /api/version within {timeout} s: {exc}")
    took = (clock() - start) * 1000
    return Finding("ok", f"engine: version {version} answered in {took:.0f} ms")


def check_vram(gpu_env: Path, warn: int, run: Runner) -> list[Finding]:
    state = read_gpu_state(gpu_env)
    if state is None or not state.nvidia_ready:
        return []  # only NVIDIA has a query tool in the image
    result = run(NVIDIA_QUERY)
    if not result.ok:
        return [Finding("warning", f"gpu: nvidia-smi failed: {result.reason()}")]
    findings = []
    for index, line in enumerate(result.stdout.strip().splitlines()):
        try:
            used, total = (int(float(x)) for x in line.split(","))
        except ValueError:
            return [Finding("warning", f"gpu: cannot read nvidia-smi output {line!r}")]
        percent = 100 * used // total if total else 0
        level = "warning" if percent >= warn else "ok"
        findings.append(Finding(level, f"gpu {index}: VRAM {percent}% used "
                                       f"({used} of {total} MiB; warning at {warn}%)"))
    return findings


def check_disk(path: Path, warn: int) -> Finding:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return Finding("warning", f"disk: cannot check {path}: {exc.strerror or exc}")
    percent = 100 * (usage.total - usage.free) // usage.total if usage.total else 0
    level = "warning" if percent >= warn else "ok"
    return Finding(level, f"disk: {path} {percent}% used ({usage.free // 2**20} MiB free; "
                          f"warning at {warn}%)")


def failed_check_blames_the_engine(monitor: Mapping[str, str]) -> Finding | None:
    """None when the failed check means the engine did not answer; else why not to restart it.

    systemd hands an OnFailure= unit the failed unit's result (MONITOR_* since v251). Only exit 1
    (engine down) or a hung check is the engine's fault; exit 2 is the check's own settings, and
    restarting a healthy engine for a typo would kill inference every interval.
    """
    code, status = monitor.get("MONITOR_EXIT_CODE", ""), monitor.get("MONITOR_EXIT_STATUS", "")
    if not code or monitor.get("MONITOR_SERVICE_RESULT") == "timeout":
        return None  # run by hand, or the check itself hung
    if code == "exited" and status == str(EXIT_FAILED):
        return None
    return Finding("error", f"the health check failed ({code} {status}) for a reason other than the "
                            f"engine (bad settings? see journalctl -u {monitor.get('MONITOR_UNIT', PROG)}); "
                            f"{ENGINE_UNIT} left alone")


def restart_engine(run: Runner, monitor: Mapping[str, str]) -> Finding:
    """Restart a running-but-hung (or failed) engine; leave one an admin stopped alone."""
    not_the_engine = failed_check_blames_the_engine(monitor)
    if not_the_engine is not None:
        return not_the_engine
    state = run(["systemctl", "is-active", ENGINE_UNIT]).stdout.strip() or "unknown"
    # An appliance's engine is always meant to run: a stopped one is brought back too (to keep it
    # down for maintenance, stop neuraldrive-healthcheck.timer first).
    if state in ("activating", "reloading", "deactivating"):
        return Finding("warning", f"{ENGINE_UNIT} is {state}; not restarting it mid-start")
    if state == "failed":
        # A unit that hit its start limit refuses a plain restart until this.
        run(["systemctl", "reset-failed", ENGINE_UNIT])
    result = run(["systemctl", "restart", "--no-block", ENGINE_UNIT])
    if not result.ok:
        return Finding("error", f"restarting {ENGINE_UNIT} failed: {result.reason()}")
    return Finding("ok", f"restarting {ENGINE_UNIT}: it did not answer (it was {state})")


def report(findings: list[Finding]) -> int:
    """One journal line per finding; the worst one decides the exit status."""
    for finding in findings:
        log(f"{finding.level}: {finding.message}", "info" if finding.level == "ok" else finding.level)
    if any(f.level == "error" for f in findings):
        return EXIT_FAILED
    return EXIT_WARNING if any(f.level == "warning" for f in findings) else EXIT_OK


def run_checks(settings: Settings, gpu_env: Path, state_dir: Path, run: Runner) -> int:
    limits = Limits.from_settings(settings)
    client = Client(settings.text("OLLAMA_HOST"))
    return report([check_engine(client, limits.api_timeout),
                   *check_vram(gpu_env, limits.vram_warn, run),
                   check_disk(state_dir, limits.disk_warn)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check the engine (GET /api/version within NEURALDRIVE_HEALTH_API_TIMEOUT "
                    "s), NVIDIA VRAM use (NEURALDRIVE_HEALTH_VRAM_WARN_PERCENT) and disk use of "
                    f"{STATE_DIR} (NEURALDRIVE_HEALTH_DISK_WARN_PERCENT). Exit 0 healthy, 1 "
                    "engine failed, 2 bad settings, 3 warnings.")
    parser.add_argument("--restart-engine", action="store_true",
                        help=f"instead of checking, (re)start {ENGINE_UNIT} unless it is starting or "
                             "stopping right now (root; run by the health check's OnFailure= unit)")
    parser.add_argument("--gpu-env", type=Path, default=Path(GPU_ENV), metavar="FILE",
                        help=f"GPU facts to read (default {GPU_ENV})")
    parser.add_argument("--state-dir", type=Path, default=Path(STATE_DIR), metavar="DIR",
                        help=f"directory whose disk to check (default {STATE_DIR})")
    return parser


def main(argv: Sequence[str] | None = None, run: Runner = run_command) -> int:
    args = build_parser().parse_args(argv)
    if args.restart_engine:
        return report([restart_engine(run, os.environ)])
    try:
        return run_checks(Settings(os.environ), args.gpu_env, args.state_dir, run)
    except ConfigError as exc:
        return fail(PROG, str(exc), EXIT_USAGE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
