"""The console menu's Models screen: pulling with progress, removing, and refusals (on the Ollama double)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.console import FakeScreen, device
from tests.fixtures.gpu import lib

console = lib("console")
ollama = lib("ollama")

REGISTRY = Path(tempfile.gettempdir()) / f"nd-console-registry-{os.getpid()}"


def test_pull_steps_add_up_every_layer() -> None:
    events = [{"status": "pulling manifest"},
              {"status": "pulling aaa", "digest": "sha256:a", "total": 300, "completed": 0},
              {"status": "pulling aaa", "digest": "sha256:a", "total": 300, "completed": 300},
              {"status": "pulling bbb", "digest": "sha256:b", "total": 100, "completed": 50},
              {"status": "verifying sha256 digest"}, {"status": "success"}]
    steps = list(console.pull_steps(events))
    assert [p for p, _ in steps] == [0, 0, 100, 87, 87, 100]
    assert steps[3][1] == "pulling bbb (350 B of 400 B)"


@pytest.mark.double_env(OLLAMA_TESTDOUBLE_REGISTRY=str(REGISTRY))
def test_models_pull_with_progress_then_remove(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    from builder.proof.ollama_double import write_model

    shutil.rmtree(REGISTRY, ignore_errors=True)
    write_model(REGISTRY, "tiny:1b", 5000)
    ollama_double.add_model("kept", 1000)
    dev = device(tmp_path, ollama_double.host)
    screen = FakeScreen(("menu", "4"), ("menu", "p"), ("ask", "tiny:1b"), ("menu", None))
    try:
        console.main_menu(screen, dev)
    finally:
        shutil.rmtree(REGISTRY, ignore_errors=True)
    (progress,) = [s for s in screen.shown if s[0] == "progress"]
    assert progress[1] == "Pulling tiny:1b" and progress[2][-1] == (100, "success (4.9 KiB of 4.9 KiB)")
    assert any(0 < p < 100 or "pulling" in line for p, line in progress[2])
    assert ("Pull a model", "pulled tiny:1b") in screen.texts()
    names = sorted(ollama.entry_name(m) for m in ollama.Client(ollama_double.host).tags())
    assert names == ["kept:latest", "tiny:1b"]
    # The list now shows both; remove the second (after asking).
    screen = FakeScreen(("menu", "4"), ("menu", "2"), ("yesno", False), ("menu", "2"), ("yesno", True),
                        ("menu", None))
    console.main_menu(screen, dev)
    listing = next(s[3] for s in screen.shown if s[0] == "menu" and s[1] == "Models")
    assert listing[0] == ("p", "Pull a model ...") and listing[2][1].startswith("tiny:1b")
    assert ("Remove a model", "removed tiny:1b") in screen.texts()
    assert [ollama.entry_name(m) for m in ollama.Client(ollama_double.host).tags()] == ["kept:latest"]


def test_pull_refuses_a_bad_name_and_shows_engine_errors(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    dev = device(tmp_path, ollama_double.host)
    screen = FakeScreen(("menu", "4"), ("menu", "p"), ("ask", "-rf /"), ("menu", "p"), ("ask", "absent:1b"),
                        ("menu", None))
    console.main_menu(screen, dev)
    texts = screen.texts()
    assert texts[0] == ("Pull a model", "'-rf /' is not a model name")
    assert texts[1][0] == "Pull failed" and "file does not exist" in texts[1][1]


def test_models_with_the_engine_down(tmp_path: Path) -> None:
    screen = FakeScreen(("menu", "4"))
    console.main_menu(screen, device(tmp_path, "127.0.0.1:9"))
    ((title, body),) = screen.texts()
    assert title == "Models" and "engine not answering" in body
