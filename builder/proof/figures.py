"""The bench's figures: a named series of measured values, its summary, and the ratios the bench
reports (absolute times depend on the machine; ratios between figures of one run less so)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

BUILD_RATIOS = ("warm_build_unchanged", "warm_build_template", "warm_build_package")
# The goal: NeuralDrive's power-on to an authenticated /api/version through the gateway no
# slower than the reference's power-on to its login prompt.
REFERENCE_GOAL = 1.0
GATEWAY_GOAL_S = 35.0  # and this, on a quiet 2-core machine


@dataclass
class Figure:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        if not self.values:
            return {"runs": 0}
        return {"runs": len(self.values), "min": min(self.values), "median": statistics.median(self.values),
                "max": max(self.values), "unit": self.unit, "values": list(self.values)}


def reference_ratio_name(mode: str) -> str:
    return f"gateway_{mode} / reference_console_{mode}"


def build_ratios(figures: dict[str, Figure]) -> dict[str, float]:
    """Each warm build's time over the cold build's."""
    cold = figures["cold_build"].values[0]
    return {name: round(figures[name].values[0] / cold, 3) for name in BUILD_RATIOS}


def reference_ratios(figures: dict[str, Figure], modes: list[str]) -> dict[str, float]:
    """Per mode, NeuralDrive's median power-on to gateway over the reference's median power-on to
    its login prompt, both booted in this run (modes without both figures have none)."""
    ratios = {}
    for mode in modes:
        gateway, reference = figures.get(f"boot_gateway_{mode}"), figures.get(f"reference_console_{mode}")
        if gateway and gateway.values and reference and reference.values:
            ratios[reference_ratio_name(mode)] = round(
                statistics.median(gateway.values) / statistics.median(reference.values), 3)
    return ratios
