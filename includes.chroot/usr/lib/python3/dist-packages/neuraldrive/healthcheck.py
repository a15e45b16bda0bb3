"""healthcheck: is the engine answering, on the GPU it was given, with models; VRAM and disk use?

Run by a timer as an unprivileged user. An engine that does not answer gets restarted (it can
be running yet hung, e.g. after a GPU fault): the check exits 1, and its unit's OnFailure=
runs `healthcheck --restart-engine` as root in a unit that can do nothing else. Full VRAM or
disk, or an empty model store, is reported but left alone.
A GPU fault (seed 004) — a GPU was detected at boot (gpu.env) but its driver stops answering
(nvidia-smi fails), or the engine silently runs a model on the CPU (/api/ps size_vram 0) — gets
one engine restart per boot: the check exits 4, the recovery unit restarts the engine and
writes GPU_RESTART_MARK in /run; while that mark exists the check only reports the fault
(exit 5), so a GPU that stays broken never causes a restart loop. A reboot clears it.
Exit status: 0 healthy, 1 engine failed, 2 bad settings, 3 warnings only, 4 GPU fault (restart
once), 5 GPU fault after that restart (an operator's turn).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import llama_server
from .common import ConfigError, Runner, Settings, fail, log, run_command
from .gpu import read_gpu_state
from .ollama import Client, EngineError, entry_name
from .paths import ENGINE_UNIT, GPU_ENV, RUN_DIR, STATE_DIR

PROG = "healthcheck"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WARNING, EXIT_GPU, EXIT_GPU_AGAIN = 0, 1, 2, 3, 4, 5
GPU_RESTART_MARK = f"{RUN_DIR}/health-gpu-restart"


def mark_for(unit: str) -> Path:
    """The one-restart-per-boot mark of an engine unit (an instance has its own)."""
    instance = unit.removesuffix(".service").partition("@")[2]
    return Path(GPU_RESTART_MARK + (f"@{instance}" if instance else ""))
ENGINE_UNITS = re.compile(r"neuraldrive-ollama(@[a-z0-9][a-z0-9-]{0,31})?\.service")
NVIDIA_QUERY = ["nvidia-smi", "--query-gpu=memory.used,memory.total",
                "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warning | error
    message: str
    gpu_fault: bool = False  # an error an engine restart may cure (once)


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


def check_models(client: Client, timeout: int) -> Finding:
    try:
        count = len(client.tags(timeout=timeout))
    except EngineError as exc:
        return Finding("warning", f"models: cannot list them: {exc}")
    if not count:
        return Finding("warning", "models: the model store is empty; pull one (neuraldrive pull NAME) "
                                  "or preload one on the stick (build.py usb --models)")
    return Finding("ok", f"models: {count} in the store")


def check_gpu_use(client: Client, gpu_env: Path, timeout: int) -> Finding | None:
    """A GPU image whose engine runs a loaded model with nothing in VRAM fell back to the CPU."""
    state = read_gpu_state(gpu_env)
    if state is None or state.driver != "loaded" or state.backend == "cpu":
        return None
    try:
        models = client.ps(timeout=timeout)
    except EngineError:
        return None  # the engine check reports that
    on_cpu = sorted(entry_name(m) for m in models if not m.get("size_vram") and m.get("size"))
    if on_cpu:
        return Finding("error", f"gpu: {', '.join(on_cpu)} loaded with nothing in VRAM (size_vram 0): "
                                f"the engine fell back to the CPU although gpu-detect found "
                                f"{state.vendor} ({state.backend})", gpu_fault=True)
    return Finding("ok", f"gpu: {len(models)} loaded model(s) in VRAM" if models else
                         "gpu: no model loaded")


def check_vram(gpu_env: Path, warn: int, run: Runner) -> list[Finding]:
    state = read_gpu_state(gpu_env)
    if state is None or not state.nvidia_ready:
        return []  # only NVIDIA has a query tool in the image
    result = run(NVIDIA_QUERY)
    if not result.ok:
        return [Finding("error", f"gpu: the NVIDIA driver does not answer (nvidia-smi failed: "
                                 f"{result.reason()})", gpu_fault=True)]
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


def failed_check_blames_the_engine(monitor: Mapping[str, str], unit: str = ENGINE_UNIT) -> Finding | None:
    """None when the failed check means the engine did not answer; else why not to restart it.

    systemd hands an OnFailure= unit the failed unit's result (MONITOR_* since v251). Only exit 1
    (engine down) or a hung check is the engine's fault; exit 2 is the check's own settings, and
    restarting a healthy engine for a typo would kill inference every interval.
    """
    code, status = monitor.get("MONITOR_EXIT_CODE", ""), monitor.get("MONITOR_EXIT_STATUS", "")
    if not code or monitor.get("MONITOR_SERVICE_RESULT") == "timeout":
        return None  # run by hand, or the check itself hung
    if code == "exited" and status in (str(EXIT_FAILED), str(EXIT_GPU)):
        return None
    if code == "exited" and status == str(EXIT_GPU_AGAIN):
        return Finding("error", f"the GPU fault persists after the one engine restart this boot allows "
                                f"({mark_for(unit)}); {unit} left alone: check the driver, "
                                "or reboot")
    return Finding("error", f"the health check failed ({code} {status}) for a reason other than the "
                            f"engine (bad settings? see journalctl -u {monitor.get('MONITOR_UNIT', PROG)}); "
                            f"{unit} left alone")


def restart_engine(run: Runner, monitor: Mapping[str, str], mark: Path | None = None,
                   now: Callable[[], float] = time.time, unit: str = ENGINE_UNIT) -> Finding:
    """Restart a running-but-hung (or failed) engine; leave one an admin stopped alone."""
    mark = mark or mark_for(unit)
    not_the_engine = failed_check_blames_the_engine(monitor, unit)
    if not_the_engine is not None:
        return not_the_engine
    if monitor.get("MONITOR_EXIT_STATUS") == str(EXIT_GPU):
        if mark.exists():
            return Finding("error", f"GPU fault again; the engine was already restarted for one this "
                                    f"boot ({mark}); {unit} left alone")
        try:
            mark.write_text(f"{now():.0f}\n", encoding="utf-8")
        except OSError as exc:  # without the mark the next fault would restart again: do not
            return Finding("error", f"cannot write {mark} ({exc.strerror}); not restarting for a GPU fault")
    state = run(["systemctl", "is-active", unit]).stdout.strip() or "unknown"
    # An appliance's engine is always meant to run: a stopped one is brought back too (to keep it
    # down for maintenance, stop neuraldrive-healthcheck.timer first).
    if state in ("activating", "reloading", "deactivating"):
        return Finding("warning", f"{unit} is {state}; not restarting it mid-start")
    # Always: a unit whose start limit is used up refuses a restart until this, also when it is
    # merely stopped ("inactive") rather than "failed".
    run(["systemctl", "reset-failed", unit])
    result = run(["systemctl", "restart", "--no-block", unit])
    if not result.ok:
        return Finding("error", f"restarting {unit} failed: {result.reason()}")
    return Finding("ok", f"restarting {unit}: it did not answer (it was {state})")


def report(findings: list[Finding], mark: Path | None = None) -> int:
    """One journal line per finding; the worst one decides the exit status."""
    for finding in findings:
        log(f"{finding.level}: {finding.message}", "info" if finding.level == "ok" else finding.level)
    errors = [f for f in findings if f.level == "error"]
    if any(not f.gpu_fault for f in errors):
        return EXIT_FAILED
    if errors:
        mark = mark or mark_for(ENGINE_UNIT)
        if mark.exists():
            log(f"error: the engine was already restarted once this boot for a GPU fault ({mark}); "
                "not again: check the driver, or reboot", "error")
            return EXIT_GPU_AGAIN
        return EXIT_GPU
    return EXIT_WARNING if any(f.level == "warning" for f in findings) else EXIT_OK


def run_checks(settings: Settings, gpu_env: Path, state_dir: Path, run: Runner,
               mark: Path | None = None, llama: bool = True) -> int:
    limits = Limits.from_settings(settings)
    client = Client(settings.text("OLLAMA_HOST"))
    engine = check_engine(client, limits.api_timeout)
    findings = [engine, *check_vram(gpu_env, limits.vram_warn, run), check_disk(state_dir, limits.disk_warn)]
    if engine.level == "ok":
        gpu_use = check_gpu_use(client, gpu_env, limits.api_timeout)
        findings[1:1] = [check_models(client, limits.api_timeout), *([gpu_use] if gpu_use else [])]
    llama_line = llama_server.health_finding() if llama else None  # the main engine's check only
    if llama_line:
        findings.append(Finding(*llama_line))
    return report(findings, mark)


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
    parser.add_argument("--engine-unit", default=ENGINE_UNIT, metavar="UNIT",
                        help=f"the engine unit checked and restarted (default {ENGINE_UNIT}; an "
                             "instance: neuraldrive-ollama@NAME.service, its address from OLLAMA_HOST)")
    parser.add_argument("--gpu-env", type=Path, default=Path(GPU_ENV), metavar="FILE",
                        help=f"GPU facts to read (default {GPU_ENV})")
    parser.add_argument("--state-dir", type=Path, default=Path(STATE_DIR), metavar="DIR",
                        help=f"directory whose disk to check (default {STATE_DIR})")
    return parser


def main(argv: Sequence[str] | None = None, run: Runner = run_command) -> int:
    args = build_parser().parse_args(argv)
    if not ENGINE_UNITS.fullmatch(args.engine_unit):
        return fail(PROG, f"--engine-unit {args.engine_unit!r} is not an engine unit "
                          "(neuraldrive-ollama[@NAME].service)", EXIT_USAGE)
    if args.restart_engine:
        return report([restart_engine(run, os.environ, unit=args.engine_unit)])
    try:
        return run_checks(Settings(os.environ), args.gpu_env, args.state_dir, run, mark_for(args.engine_unit),
                          llama=args.engine_unit == ENGINE_UNIT)
    except ConfigError as exc:
        return fail(PROG, str(exc), EXIT_USAGE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
