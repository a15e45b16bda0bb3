"""The verdict of an image-test run: pass/fail counts, the boots' figures, errors; printed as a table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from builder.console import info
from builder.proof.boots import BootFigures


@dataclass
class Summary:
    iso: str
    boots: list[BootFigures] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    # What image tests measured (tests/image/helpers.py record_figure): name -> "value unit".
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.errors and self.passed > 0


def print_summary(summary: Summary) -> None:
    info("")
    info(f"{'boot':<28}{'accel':<6}{'console':>8}{'SSH':>8}{'running':>9}{'gateway':>9}  failed units")
    for b in summary.boots:
        cells = [b.console_s, b.ssh_s, b.system_running_s, b.gateway_ready_s]
        widths = (8, 8, 9, 9)
        shown = "".join(f"{(f'{c:.0f}s' if c is not None else '-'):>{w}}" for c, w in zip(cells, widths, strict=True))
        info(f"{b.mode:<28}{b.accel:<6}{shown}  {' '.join(b.failed_units) or 'none'}")
    for qemu in sorted({b.qemu for b in summary.boots if b.qemu}):
        info(f"booted with {qemu}")
    for name, value in summary.figures.items():
        info(f"figure: {name}: {value}")
    for error in summary.errors:
        info(f"error: {error.splitlines()[0]}")
    info(f"{summary.passed} passed, {summary.failed} failed, {summary.skipped} skipped")


def recorded_figures(state_file: Path) -> dict[str, str]:
    """The figures the image tests left in their shared state file (none if it is missing or torn)."""
    try:
        figures = json.loads(state_file.read_text()).get("figures", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in figures.items()} if isinstance(figures, dict) else {}
