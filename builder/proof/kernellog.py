"""Time spent in the initramfs, from the kernel's own timestamps: `dmesg` in the guest, or a serial
log that shows the kernel's lines (NeuralDrive's command line has no `quiet`).

It starts at the kernel's "Run /init as init process" and ends when the initramfs execs the real
init: the kernel logs TOMOYO's "Not activating Mandatory Access Control ..." on that exec of
/sbin/init (Debian's kernels build TOMOYO in, with no policy loader in the image). Where that line
is missing, systemd's first line ends it (it comes ~0.5 s later, after systemd's own start-up).
With initramfs-tools there is no initrd systemd, so `systemd-analyze` counts this time as "kernel".
"""

from __future__ import annotations

import re

INIT_STARTS = "Run /init as init process"
REAL_INIT_MARKERS = ("Not activating Mandatory Access Control", "systemd[1]:")
# "[   12.358802] message": searched, not matched, as a serial line may carry escape codes before it.
_LINE = re.compile(r"\[\s*(\d+\.\d+)\] (.*)")


def kernel_lines(log: str) -> list[tuple[float, str]]:
    """(seconds since boot, message) of every line with a kernel timestamp, in order."""
    lines = []
    for line in log.splitlines():
        match = _LINE.search(line)
        if match:
            lines.append((float(match.group(1)), match.group(2).rstrip("\r")))
    return lines


def initramfs_seconds(log: str) -> float | None:
    """Seconds from the initramfs's start to the real init; None if the log lacks either end (a
    ring buffer that overflowed, a log that starts late)."""
    lines = kernel_lines(log)
    starts = [i for i, (_, message) in enumerate(lines) if message.startswith(INIT_STARTS)]
    if not starts:
        return None
    start = starts[0]
    for marker in REAL_INIT_MARKERS:
        for seconds, message in lines[start + 1:]:
            if message.startswith(marker):
                return round(seconds - lines[start][0], 2)
    return None
