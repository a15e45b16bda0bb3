"""Run live-build as named phases: `lb config` + `lb build` helpers logged to a file, one progress line per
stage (the host and the build dir: builddir.py)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from builder.console import ProgressLine, format_seconds, info
from builder.errors import HostError, LiveBuildError
from builder.image import binarytools, cache

# live-build announces each helper it runs as "[timestamp] lb <helper> ...".
_STEP = re.compile(r"^\[[^\]]+\] lb ([a-z0-9_-]+)")


@dataclass
class BuildRun:
    log: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PyStep:
    """A step of a phase done in Python between live-build helpers."""

    name: str
    run: Callable[[Path], None]


Command = tuple[str, ...] | PyStep


@dataclass(frozen=True)
class Phase:
    """A named, timed part of the build: live-build helpers run in order (what `lb chroot` and
    `lb binary` run, split where the package layer is taken and the binary-tools chroot is used)."""

    name: str
    commands: tuple[Command, ...]


_PREP_INSTALL = ("lb", "chroot_prep", "install", "all", "mode-archives-chroot")
_PREP_REMOVE = ("lb", "chroot_prep", "remove", "all", "mode-archives-chroot")
CONFIG = Phase("config", (("lb", "config"),))
BOOTSTRAP = Phase("bootstrap", (("lb", "bootstrap"),))
PACKAGES = Phase("packages", (
    _PREP_INSTALL,
    ("lb", "chroot_linux-image"),
    ("lb", "chroot_firmware"),
    ("lb", "chroot_preseed"),
    ("lb", "chroot_includes_before_packages"),
    ("lb", "chroot_package-lists", "install"),
    ("lb", "chroot_install-packages", "install"),
    ("sh", "-c", "chroot chroot dpkg-query -W > chroot.packages.install"),
    ("lb", "chroot_package-lists", "live"),
    ("lb", "chroot_install-packages", "live"),
    _PREP_REMOVE,
))
# The hooks and includes need no apt: without the archives helper the customize phase does not
# fetch the indices and then drop them again (8 s); the package phase left the image's final
# sources.list in place.
CUSTOMIZE = Phase("customize", (
    ("lb", "chroot_prep", "install", "all-except-archives"),
    ("lb", "chroot_includes_after_packages"),
    ("lb", "chroot_hooks"),
    ("lb", "chroot_hacks"),
    ("sh", "-c", "chroot chroot dpkg-query -W > chroot.packages.live"),
    ("lb", "chroot_prep", "remove", "all-except-archives"),
    ("sh", "-c", "chroot chroot ls -lR > chroot.files"),
))

# What `lb binary` prepares in the outer chroot (it deliberately leaves out debianchroot).
_MOUNTS, _OTHER = "devpts proc selinuxfs sysfs", "dpkg tmpfs sysv-rc hosts resolv hostname apt"
_BINARY_PREP_INSTALL: tuple[Command, ...] = (
    ("lb", "chroot_prep", "install", _MOUNTS),
    ("lb", "chroot_prep", "install", _OTHER, "mode-apt-install-binary", "mode-archives-chroot"),
)
_BINARY_PREP_REMOVE: tuple[Command, ...] = (
    ("lb", "chroot_prep", "remove", _OTHER),
    ("lb", "chroot_prep", "remove", _MOUNTS),
)
# `lb binary`'s helpers in its order, but for binary_bootloader_splash: it installs librsvg and
# fonts every build to render a splash no NeuralDrive boot menu shows.
_HELPERS_BEFORE_ISO = ("rootfs", "dm-verity", "manifest", "package-lists", "linux-image", "memtest",
                       "grub-legacy", "grub-pc", "grub_cfg", "syslinux", "disk", "loadlin", "win32-loader",
                       "includes", "grub-efi", "hooks", "checksums")
_HELPERS_FROM_ISO = ("iso", "onie", "netboot", "tar", "hdd", "zsync")
# `lb binary`'s own step: everything the helpers wrote gets SOURCE_DATE_EPOCH before the ISO.
_CLAMP_TIMES = ("sh", "-c", 'find binary -newermt "$(date -d@${SOURCE_DATE_EPOCH} \'+%Y-%m-%d %H:%M:%S\')" '
                "-printf \"%y %p\\n\" -exec touch '{}' -d@${SOURCE_DATE_EPOCH} --no-dereference ';' "
                "> binary.modified_timestamps")


def image_phase(tools: Path, reuse_tools: bool) -> Phase:
    """`lb binary` and `lb source`, with `tools` (a binary-tools chroot archive) as the outer
    chroot: unpacked if `reuse_tools`, else made from the bootstrap and saved. No `lb installer`:
    with `--debian-installer none` it only runs three apt index updates (10 s) and adds nothing."""
    if reuse_tools:
        # A freshly made tools chroot is checked before it is saved; a cached one when unpacked.
        outer: tuple[Command, ...] = (
            PyStep("binary_chroot (cached tools)", lambda d: cache.restore_tools(d, tools)),
            PyStep("check binary tools", binarytools.check_tools),
        )
    else:
        outer = (
            ("lb", "binary_chroot"),
            *_BINARY_PREP_INSTALL,
            ("lb", "chroot_archives", "chroot", "install"),
            ("sh", "-c", binarytools.install_script()),
            ("lb", "chroot_archives", "chroot", "remove"),
            *_BINARY_PREP_REMOVE,
            PyStep("save binary tools", lambda d: cache.save_tools(d, tools)),
        )
    return Phase("binary", (
        *outer,
        PyStep("lend image files", binarytools.lend_image_files),
        *_BINARY_PREP_INSTALL,
        *(("lb", f"binary_{helper}") for helper in _HELPERS_BEFORE_ISO),
        _CLAMP_TIMES,
        *(("lb", f"binary_{helper}") for helper in _HELPERS_FROM_ISO),
        *_BINARY_PREP_REMOVE,
        ("lb", "source"),
    ))


class LiveBuildRunner:
    """Runs phases in a build dir, all output to build.log, one progress line per phase."""

    def __init__(self, build_dir: Path, env_extra: dict[str, str]) -> None:
        self.build_dir = build_dir
        self.env = {**os.environ, **env_extra, "LC_ALL": "C.UTF-8"}
        self.run = BuildRun(log=build_dir / "build.log")
        self._handle = self.run.log.open("a", encoding="utf-8")

    def phase(self, phase: Phase) -> None:
        started = time.monotonic()
        progress = ProgressLine(interval=30.0)
        try:
            for command in phase.commands:
                if isinstance(command, PyStep):
                    _run_step(command, self.build_dir, self._handle, phase.name, progress, started)
                else:
                    _run_logged(list(command), self.build_dir, self.env, self._handle, phase.name, progress, started)
        finally:
            self._handle.flush()
            seconds = round(time.monotonic() - started, 1)
            self.run.stage_seconds[phase.name] = self.run.stage_seconds.get(phase.name, 0.0) + seconds
            progress.close()
        info(f"  {phase.name:<10} done in {format_seconds(seconds)}")

    def timed(self, name: str, seconds: float) -> None:
        self.run.stage_seconds[name] = round(seconds, 1)

    def close(self) -> None:
        self._handle.close()


def _progress_text(phase: str, step: str, started: float) -> str:
    return f"{phase:<10} {step:<28} {format_seconds(time.monotonic() - started)}"


def _run_step(step: PyStep, build_dir: Path, handle: TextIO, phase: str, progress: ProgressLine,
              started: float) -> None:
    handle.write(f"### {phase}: {step.name}\n")
    handle.flush()
    progress.update(_progress_text(phase, step.name, started), force=True)
    try:
        step.run(build_dir)
    except OSError as error:
        progress.close()
        raise LiveBuildError(f"{step.name} failed during {phase}: {error}\n"
                             f"full log: {build_dir / 'build.log'}") from None


def _run_logged(cmd: list[str], cwd: Path, env: dict[str, str], handle: TextIO, phase: str,
                progress: ProgressLine, started: float) -> None:
    tail: deque[str] = deque(maxlen=40)
    step = cmd[1] if cmd[0] == "lb" and len(cmd) > 1 else cmd[0]
    handle.write(f"### {phase}: {' '.join(cmd)}\n")
    progress.update(_progress_text(phase, step, started), force=True)
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
            step_match = _STEP.match(line)
            if step_match:
                step = step_match.group(1)
            # At most one line every 30 s (a TTY redraws in place).
            progress.update(_progress_text(phase, step, started))
        code = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        handle.flush()
    if code != 0:
        progress.close()
        raise LiveBuildError(
            f"`{' '.join(cmd)}` failed (exit {code}) during {phase} ({step}).\n"
            + "\n".join(tail)
            + f"\nfull log: {cwd / 'build.log'}"
        )
