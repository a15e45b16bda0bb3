"""neuraldrive bench: how fast a model answers here, from the engine's own counters.

Each run is one non-streaming POST /api/generate; its final answer carries the engine's timings
(nanoseconds): load_duration, prompt_eval_count/prompt_eval_duration, eval_count/eval_duration.
  time to first token = load_duration + prompt_eval_duration (the first token is sampled from the
                        prompt's logits, so it exists once the prompt is evaluated)
  prompt tokens/s     = prompt_eval_count / prompt_eval_duration
  generation tokens/s = eval_count / eval_duration
The model is loaded before the first run, so every run is warm. Each run's prompt starts with its
run number, so the engine cannot answer it from the previous run's prompt cache.
The operator page computes the same figures in www/js/bench.js (tests hold the two together).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from .common import human_bytes
from .ollama import KEEP_FOREVER, Client, EngineError, entry_name, keep_alive_body
from .status import Status

PROMPT = "Explain the difference between TCP and UDP in networking, in three sentences."
NUM_PREDICT = 128
RUN_TIMEOUT_S = 600.0
NS = 1e9


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    prompt_tokens: int
    prompt_tps: float | None  # None when the engine evaluated no prompt tokens
    gen_tokens: int
    gen_tps: float | None


def _count(answer: dict[str, Any], key: str) -> int:
    value = answer.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise EngineError(f"the engine's {key} is not a count: {value!r}")
    return int(value)


def _rate(tokens: int, duration_ns: int) -> float | None:
    return tokens / (duration_ns / NS) if tokens and duration_ns else None


def parse_answer(answer: dict[str, Any]) -> Sample:
    """One final /api/generate answer -> its figures."""
    if not answer.get("done"):
        raise EngineError("the engine's answer is not a final one (done is not true)")
    prompt_n, prompt_ns = _count(answer, "prompt_eval_count"), _count(answer, "prompt_eval_duration")
    gen_n, gen_ns = _count(answer, "eval_count"), _count(answer, "eval_duration")
    return Sample((_count(answer, "load_duration") + prompt_ns) / NS, prompt_n,
                  _rate(prompt_n, prompt_ns), gen_n, _rate(gen_n, gen_ns))


def spread(values: list[float | None]) -> dict[str, float] | None:
    """min, median and max of the known values; None when there are none."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"min": min(known), "median": statistics.median(known), "max": max(known)}


def summarize(samples: list[Sample]) -> dict[str, Any]:
    return {"ttft_s": spread([s.ttft_s for s in samples]),
            "prompt_tps": spread([s.prompt_tps for s in samples]),
            "gen_tps": spread([s.gen_tps for s in samples])}


def run_prompt(index: int, prompt: str = PROMPT) -> str:
    return f"[run {index}] {prompt}"


def generate_body(model: str, index: int, num_predict: int = NUM_PREDICT) -> dict[str, Any]:
    return {"model": model, "prompt": run_prompt(index), "stream": False, "keep_alive": KEEP_FOREVER,
            "options": {"num_predict": num_predict, "temperature": 0, "seed": 42}}


def pick_model(client: Client, wanted: str | None) -> str:
    """The named model, else the first loaded one, else the first on disk."""
    if wanted:
        return wanted
    for entries in (client.ps(), client.tags()):
        if entries:
            return entry_name(entries[0])
    raise EngineError("no model on this appliance to benchmark (pull one first)")


def bench(client: Client, model: str, runs: int, status: Status | None = None,
          num_predict: int = NUM_PREDICT) -> dict[str, Any]:
    details = client.call("POST", "/api/show", {"model": model}).get("details") or {}
    client.call("POST", "/api/generate", keep_alive_body(model, KEEP_FOREVER), timeout=RUN_TIMEOUT_S)
    samples = [parse_answer(client.call("POST", "/api/generate", generate_body(model, i, num_predict),
                                        timeout=RUN_TIMEOUT_S)) for i in range(1, runs + 1)]
    return {"model": model, "quantization": details.get("quantization_level"),
            "parameter_size": details.get("parameter_size"),
            "gpu_backend": status.gpu_backend if status else None,
            "vram_used": status.vram_used if status else None,
            "runs": runs, "num_predict": num_predict,
            "samples": [asdict(s) for s in samples], **summarize(samples)}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", nargs="?", help="default: the first loaded model, else the first on disk")
    parser.add_argument("--runs", type=int, default=3, help="runs to take min/median/max over (3)")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    return parser


def _fmt(values: dict[str, float] | None, unit: str, digits: int) -> str:
    if values is None:
        return "n/a"
    return "  ".join(f"{k} {values[k]:.{digits}f}{unit}" for k in ("min", "median", "max"))


def render_text(report: dict[str, Any]) -> list[str]:
    vram = report.get("vram_used")
    return [
        f"Model       {report['model']} ({report.get('parameter_size') or '?'}, "
        f"{report.get('quantization') or 'quantization unknown'})",
        f"GPU         backend {report.get('gpu_backend') or 'unknown'}, VRAM used "
        f"{human_bytes(vram) if vram is not None else 'n/a'}",
        f"Runs        {report['runs']} (warm, up to {report['num_predict']} tokens each)",
        f"First token {_fmt(report['ttft_s'] and {k: v * 1000 for k, v in report['ttft_s'].items()}, ' ms', 0)}",
        f"Prompt      {_fmt(report['prompt_tps'], ' tok/s', 1)}",
        f"Generation  {_fmt(report['gen_tps'], ' tok/s', 1)}",
    ]
