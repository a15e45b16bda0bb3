"""neuraldrive bench: the figures from recorded engine answers, the statistics, the page's twin math
(www/js/bench.js, run by node when it is there) and the command against the Ollama double."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OllamaDouble
from tests.fixtures.gpu import CHROOT, FakeRunner, lib

bench = lib("bench")
admin = lib("neuraldrive")
common = lib("common")
ollama = lib("ollama")

ENGINE = Path(__file__).resolve().parents[1] / "fixtures" / "engine"
BENCH_JS = CHROOT / "usr/share/neuraldrive/www/js/bench.js"
RECORDED = json.loads((ENGINE / "generate.json").read_text())
# Three answers: the recorded one and two with other counters (one with its prompt served from cache).
ANSWERS: list[dict[str, Any]] = [
    RECORDED,
    {**RECORDED, "load_duration": 20_000_000, "prompt_eval_count": 30, "prompt_eval_duration": 100_000_000,
     "eval_count": 128, "eval_duration": 1_600_000_000},
    {**RECORDED, "load_duration": 10_000_000, "prompt_eval_count": 0, "prompt_eval_duration": 0,
     "eval_count": 100, "eval_duration": 2_000_000_000},
]


def test_parse_recorded_answer() -> None:
    sample = bench.parse_answer(RECORDED)
    assert sample.ttft_s == pytest.approx(6.338219291 + 0.130079)
    assert sample.prompt_tps == pytest.approx(26 / 0.130079)
    assert sample.gen_tps == pytest.approx(259 / 4.23271)
    assert (sample.prompt_tokens, sample.gen_tokens) == (26, 259)


@pytest.mark.parametrize("answer", [{**RECORDED, "done": False}, {**RECORDED, "eval_count": "many"},
                                    {**RECORDED, "eval_duration": -1}, {**RECORDED, "eval_count": True}])
def test_unusable_answers_are_engine_errors(answer: dict[str, Any]) -> None:
    with pytest.raises(ollama.EngineError):
        bench.parse_answer(answer)


def test_statistics() -> None:
    assert bench.spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert bench.spread([4.0, 1.0, None, 2.0, 3.0]) == {"min": 1.0, "median": 2.5, "max": 4.0}
    assert bench.spread([None, None]) is None
    summary = bench.summarize([bench.parse_answer(a) for a in ANSWERS])
    assert summary["prompt_tps"]["min"] == pytest.approx(26 / 0.130079)  # the cached prompt has no rate
    assert summary["prompt_tps"]["max"] == pytest.approx(300.0)
    assert summary["gen_tps"] == pytest.approx({"min": 50.0, "median": 259 / 4.23271, "max": 80.0})
    assert summary["ttft_s"] == pytest.approx({"min": 0.01, "median": 0.12, "max": 6.468298291})


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_the_page_computes_the_same_figures() -> None:
    script = (f"import * as b from {json.dumps(BENCH_JS.as_uri())};\n"
              f"const answers = {json.dumps(ANSWERS)};\n"
              "const samples = answers.map(b.parseAnswer);\n"
              "console.log(JSON.stringify({samples, ...b.summarize(samples), body: b.generateBody('m', 2)}));\n")
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    page = json.loads(out)
    samples = [bench.parse_answer(a) for a in ANSWERS]
    assert page["samples"] == pytest.approx([s.__dict__ for s in samples])
    summary = bench.summarize(samples)
    for key in ("ttft_s", "prompt_tps", "gen_tps"):
        assert page[key] == pytest.approx(summary[key])
    assert page["body"] == bench.generate_body("m", 2)


def test_bench_against_the_double(tmp_path: Path, ollama_double: OllamaDouble) -> None:
    """The double's timing model (BEHAVIOUR.md): 2.5 ms per prompt token, 20 ms per generated token."""
    ollama_double.add_model("tiny", size=4096)
    out = io.StringIO()
    ctx = admin.Context(common.Settings({"OLLAMA_HOST": ollama_double.host}), run=FakeRunner({}), out=out,
                        gpu_env=tmp_path / "gpu.env", state_dir=tmp_path)
    assert admin.main(["bench", "--runs", "3", "--json"], ctx) == 0
    report = json.loads(out.getvalue())
    prompt_tokens = len(bench.run_prompt(1).split())
    assert report["model"] == "tiny:latest" and report["runs"] == 3 and len(report["samples"]) == 3
    assert report["ttft_s"] == pytest.approx({k: 0.001 + prompt_tokens * 0.0025 for k in ("min", "median", "max")})
    assert report["prompt_tps"]["median"] == pytest.approx(400.0)
    assert report["gen_tps"] == pytest.approx({"min": 50.0, "median": 50.0, "max": 50.0})
    assert "quantization" in report and report["gpu_backend"] == "unknown"
    out.truncate(0)
    out.seek(0)
    assert admin.main(["bench", "tiny", "--runs", "2"], ctx) == 0
    text = out.getvalue()
    assert "Model       tiny" in text and "Generation  min 50.0 tok/s  median 50.0 tok/s  max 50.0 tok/s" in text
    assert f"First token min {1 + prompt_tokens * 2.5:.0f} ms" in text


def test_bench_needs_a_model(tmp_path: Path, ollama_double: OllamaDouble, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = admin.Context(common.Settings({"OLLAMA_HOST": ollama_double.host}), run=FakeRunner({}),
                        out=io.StringIO(), gpu_env=tmp_path / "gpu.env", state_dir=tmp_path)
    assert admin.main(["bench"], ctx) == 1
    assert "no model on this appliance to benchmark" in capsys.readouterr().err
    assert admin.main(["bench", "x", "--runs", "0"], ctx) == 2
