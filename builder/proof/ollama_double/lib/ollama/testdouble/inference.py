"""Inference routes (server/routes.go GenerateHandler, ChatHandler, EmbedHandler, EmbeddingsHandler).

Inference is pretend: a model is "loaded" by starting its llama-server child (sched.py) and every
answer is the fixed text "test double reply"; embeddings are deterministic unit vectors derived from
sha256 of the text.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from .gguf import NotGGUFError, read_gguf
from .handler import ApiHandler, dumps, now
from .http_base import error
from .sched import model_blob
from .store import ModelInfo

REPLY_TOKENS = ("test", " double", " reply")
REPLY_TEXT = "".join(REPLY_TOKENS)
DEFAULT_EMBEDDING_LENGTH = 384


# The double's timing model (deterministic, so benchmarks of it are exact): evaluating the prompt
# takes PROMPT_NS per prompt token (400 tokens/s), each generated token GEN_NS (50 tokens/s), a
# model already in memory LOAD_NS. Durations are reported, never slept.
PROMPT_NS, GEN_NS, LOAD_NS = 2_500_000, 20_000_000, 1_000_000


def timings(prompt_tokens: int, gen_tokens: int) -> dict[str, int]:
    """The counters of a final generate/chat answer (api/types.go Metrics)."""
    prompt_ns, gen_ns = prompt_tokens * PROMPT_NS, gen_tokens * GEN_NS
    return {"total_duration": LOAD_NS + prompt_ns + gen_ns, "load_duration": LOAD_NS,
            "prompt_eval_count": prompt_tokens, "prompt_eval_duration": prompt_ns,
            "eval_count": gen_tokens, "eval_duration": gen_ns}


def reply_tokens(options: Any) -> tuple[str, ...]:
    """The fixed reply, cut to options.num_predict when that is positive (done_reason "length")."""
    limit = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(REPLY_TOKENS):
        return REPLY_TOKENS[:limit]
    return REPLY_TOKENS



def embedding(model: str, text: str, dims: int) -> list[float]:
    """A deterministic unit vector: sha256 counter blocks mapped to [-1, 1]."""
    raw = b""
    counter = 0
    while len(raw) < dims * 2:
        raw += hashlib.sha256(f"{model}\0{text}\0{counter}".encode()).digest()
        counter += 1
    values = [(int.from_bytes(raw[i * 2:i * 2 + 2], "big") / 32767.5) - 1.0 for i in range(dims)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]



class InferenceHandler(ApiHandler):
    def _load_or_unload(self, name: str, keep_alive: int | None, info: ModelInfo, extra: dict[str, Any]) -> None:
        if keep_alive == 0:
            self.ctx.sched.unload_later(info.display)
            reason = "unload"
        else:
            self._load(info, keep_alive)
            reason = "load"
        self.send_json(200, {"model": name, "created_at": now(), **extra, "done": True, "done_reason": reason})

    def _paced(self, chunk: bytes) -> bytes:
        if self.ctx.stream_delay_s:
            time.sleep(self.ctx.stream_delay_s)
        return chunk

    def _answer(self, name: str, keep_alive: int | None, info: ModelInfo, stream: bool,
                piece: Callable[[str], dict[str, Any]], prompt_tokens: int, options: Any) -> None:
        self._load(info, keep_alive)
        tokens = reply_tokens(options)
        final = {"done": True, "done_reason": "stop" if len(tokens) == len(REPLY_TOKENS) else "length",
                 **timings(prompt_tokens, len(tokens))}

        def message(obj: dict[str, Any]) -> dict[str, Any]:
            return {"model": name, "created_at": now(), **obj}

        if stream:
            parts = [message({**piece(tok), "done": False}) for tok in tokens]
            parts.append(message({**piece(""), **final}))
            self.send_stream("application/x-ndjson", (self._paced(dumps(p) + b"\n") for p in parts))
        else:
            self.send_json(200, message({**piece("".join(tokens)), **final}))
        if keep_alive == 0:
            self.ctx.sched.unload_later(info.display)

    def _generate(self) -> None:
        body = self.json_body()
        name, keep_alive, info = self._model(body)
        prompt = body.get("prompt") or ""
        if not prompt:
            self._load_or_unload(name, keep_alive, info, {"response": ""})
            return
        self._answer(name, keep_alive, info, body.get("stream", True) is not False,
                     lambda text: {"response": text}, max(1, len(str(prompt).split())), body.get("options"))

    def _chat(self) -> None:
        body = self.json_body()
        name, keep_alive, info = self._model(body)
        messages = body.get("messages") or []
        if not messages:
            self._load_or_unload(name, keep_alive, info, {"message": {"role": "assistant", "content": ""}})
            return
        self._answer(name, keep_alive, info, body.get("stream", True) is not False,
                     lambda text: {"message": {"role": "assistant", "content": text}}, max(1, len(messages)),
                     body.get("options"))

    def _dims(self, info: ModelInfo) -> int:
        try:
            kv, _ = read_gguf(model_blob(info, self.ctx.store.blobs))
        except (OSError, NotGGUFError):
            return DEFAULT_EMBEDDING_LENGTH
        value = kv.get(f"{kv.get('general.architecture')}.embedding_length")
        return value if isinstance(value, int) and value > 0 else DEFAULT_EMBEDDING_LENGTH

    def _embed_vectors(self, body: dict[str, Any]) -> tuple[str, ModelInfo, list[list[float]], int]:
        name, keep_alive, info = self._model(body)
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else (raw or [])
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise error(400, "invalid input type")
        self._load(info, keep_alive)
        dims = self._dims(info)
        wanted = body.get("dimensions")
        if isinstance(wanted, int) and wanted > 0:
            if wanted > dims:
                raise error(400, f"dimensions must be between 1 and {dims}")
            dims = wanted
        vectors = [embedding(info.display, text, dims) for text in inputs]
        return name, info, vectors, sum(max(1, len(t.split())) for t in inputs)

    def _embed(self) -> None:
        name, _info, vectors, tokens = self._embed_vectors(self.json_body())
        self.send_json(200, {"model": name, "embeddings": vectors, "total_duration": 1_000_000,
                             "load_duration": 500_000, "prompt_eval_count": tokens})

    def _embeddings(self) -> None:
        body = self.json_body()
        prompt = body.get("prompt") or ""
        _name, keep_alive, info = self._model(body)
        if not prompt:
            self._load(info, keep_alive)
            self.send_json(200, {"embedding": []})
            return
        self._load(info, keep_alive)
        self.send_json(200, {"embedding": embedding(info.display, str(prompt), self._dims(info))})
