"""Run live-build: host checks, `lb config` + `lb build` logged to a file, one progress line per stage."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .errors import HostError, LiveBuildError
from .profile import Profile
from .steps import ProgressLine, format_seconds, info

MIN_LIVE_BUILD = "20250505"
STAGES = ("bootstrap", "chroot", "binary")
# live-build announces each helper as "[timestamp] lb <helper> ...": the bare stage names start a
# stage (chroot helpers also run inside the installer stage), the rest are its steps.
_STAGE = re.compile(r"^\[[^\]]+\] lb (bootstrap|chroot|installer|binary|source)\s*$")
_STEP = re.compile(r"^\[[^\]]+\] lb ([a-z0-9_-]+)")


@dataclass
class BuildRun:
    log: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)


def live_build_version() -> str:
    """The installed live-build's Debian version (e.g. 1:20250505+deb13u1)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "live-build"], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        out = None
    if out is None or out.returncode != 0 or not out.stdout:
        if shutil.which("lb") is None:
            raise HostError("live-build is not installed: run `sudo scripts/setup-host` (needs trixie's live-build)")
        return "unknown"
    return out.stdout.strip()


def check_host(require_root: bool = True) -> str:
    """Refuse hosts that cannot build a bootable image; returns the live-build version."""
    version = live_build_version()
    upstream = re.sub(r"^\d+:", "", version).split("+")[0].split("-")[0]
    if not (upstream.isdigit() and upstream >= MIN_LIVE_BUILD):
        raise HostError(
            f"live-build {version} is too old: 1:{MIN_LIVE_BUILD} or newer (trixie) is needed, older ones "
            "write ISOs without an MBR that do not boot from USB; run `sudo scripts/setup-host`"
        )
    if require_root and os.geteuid() != 0:
        raise HostError("building an image needs root (debootstrap, chroot, mounts): run with sudo")
    if shutil.which("debootstrap") is None:
        raise HostError("debootstrap not found: run `sudo scripts/setup-host`")
    return version


def cache_key(profile: Profile) -> str:
    """Key of the live-build cache (bootstrap stage + .deb files): what debootstrap depends on."""
    m = profile.debian.mirrors
    material = "\n".join([profile.debian.suite, m.bootstrap, m.chroot, m.security, " ".join(profile.debian.areas)])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def prepare_build_dir(build_dir: Path, lb_cache: Path) -> None:
    """Start from an empty build dir whose `cache` is the persistent live-build cache."""
    if build_dir.exists():
        remove_build_dir(build_dir)
    build_dir.mkdir(parents=True)
    lb_cache.mkdir(parents=True, exist_ok=True)
    (build_dir / "cache").symlink_to(lb_cache)


def remove_build_dir(build_dir: Path) -> None:
    chroot = (build_dir / "chroot").resolve()
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        held = [line.split()[1] for line in mounts if line.split()[1].startswith(str(chroot) + "/")]
    for mount in sorted(held, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    cache = build_dir / "cache"
    if cache.is_symlink():
        cache.unlink()  # never follow it: it is the shared cache
    shutil.rmtree(build_dir)


def run_live_build(build_dir: Path, env_extra: dict[str, str]) -> BuildRun:
    """`lb config` then `lb build` in `build_dir`; raises LiveBuildError with the log tail."""
    log = build_dir / "build.log"
    run = BuildRun(log=log)
    env = {**os.environ, **env_extra, "LC_ALL": "C.UTF-8"}
    with log.open("w", encoding="utf-8") as handle:
        _run_logged(["lb", "config"], build_dir, env, handle, run, "config")
        _run_logged(["lb", "build"], build_dir, env, handle, run, None)
    return run


def _run_logged(
    cmd: list[str], cwd: Path, env: dict[str, str], handle: TextIO, run: BuildRun, fixed: str | None
) -> None:
    tail: deque[str] = deque(maxlen=40)
    progress = ProgressLine(interval=30.0)
    stage = fixed or "bootstrap"
    step = ""
    stage_start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except FileNotFoundError:
        raise HostError(f"{cmd[0]} not found: run `sudo scripts/setup-host`") from None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            handle.write(line)
            tail.append(line.rstrip("\n"))
            stage_match = _STAGE.match(line) if fixed is None else None
            step_match = _STEP.match(line) if fixed is None else None
            new_stage = bool(stage_match and stage_match.group(1) != stage)
            if stage_match and new_stage:
                _finish_stage(run, stage, stage_start, progress)
                stage, stage_start = stage_match.group(1), time.monotonic()
            if step_match:
                step = step_match.group(1).removeprefix(f"{stage}_")
            # One line per stage start, then at most one every 30 s (a TTY redraws in place).
            progress.update(f"{stage:<9} {step:<26} {format_seconds(time.monotonic() - stage_start)}",
                            force=new_stage)
        code = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        handle.flush()
    _finish_stage(run, stage, stage_start, progress)
    if code != 0:
        raise LiveBuildError(
            f"`{' '.join(cmd)}` failed (exit {code}) during {stage}{' ' + step if step else ''}.\n"
            + "\n".join(tail)
            + f"\nfull log: {run.log}"
        )


def _finish_stage(run: BuildRun, stage: str, started: float, progress: ProgressLine) -> None:
    seconds = round(time.monotonic() - started, 1)
    run.stage_seconds[stage] = run.stage_seconds.get(stage, 0.0) + seconds
    progress.close()
    info(f"  {stage:<9} done in {format_seconds(seconds)}")


def find_iso(build_dir: Path) -> Path:
    isos = sorted(build_dir.glob("*.iso"))
    if len(isos) != 1:
        raise LiveBuildError(f"{build_dir}: expected one ISO after lb build, found {len(isos)}")
    return isos[0]


def find_manifest(build_dir: Path) -> Path:
    """live-build's package manifest (`<image>.packages`: name and version per line)."""
    manifests = sorted(build_dir.glob("*.packages"))
    if len(manifests) != 1:
        raise LiveBuildError(f"{build_dir}: expected one package manifest after lb build, found {len(manifests)}")
    return manifests[0]
