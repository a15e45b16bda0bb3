"""The image-test verdict carries the figures the image tests recorded (tests/image/helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.proof.summary import Summary, print_summary, recorded_figures


def test_recorded_figures_reach_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"model": "x", "figures": {"page total size (HTML, CSS, JS)": "14021 bytes"}}))
    summary = Summary(iso="x.iso", passed=1, figures=recorded_figures(state))
    print_summary(summary)
    out = capsys.readouterr()
    assert "figure: page total size (HTML, CSS, JS): 14021 bytes" in out.out + out.err


@pytest.mark.parametrize("text", [None, "", "{torn", '{"figures": ["not", "a", "map"]}', "[]"])
def test_no_or_bad_state_file_means_no_figures(tmp_path: Path, text: str | None) -> None:
    state = tmp_path / "state.json"
    if text is not None:
        state.write_text(text)
    assert recorded_figures(state) == {}
