"""Ollama's OpenAI-compatible API (openai/openai.go and its middleware): /v1/models, chat and text
completions (streamed as server-sent events) and embeddings, on the inference routes' answers."""

from __future__ import annotations

import base64
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from . import goenv
from .handler import dumps
from .http_base import HTTPError, openai_error
from .inference import REPLY_TEXT, REPLY_TOKENS, InferenceHandler
from .store import ModelInfo


class OpenAIHandler(InferenceHandler):
    _counter = 0
    _counter_lock = threading.Lock()

    def _openai_body(self) -> dict[str, Any]:
        try:
            return self.json_body()
        except HTTPError as err:
            raise openai_error(400, str(err.body.get("error"))) from err

    def _openai_model(self, info: ModelInfo) -> dict[str, Any]:
        return {"id": info.display, "object": "model", "created": info.modified_ns // goenv.NS_PER_S,
                "owned_by": info.name.namespace}

    def _v1_models(self) -> None:
        self.send_json(200, {"object": "list", "data": [self._openai_model(m) for m in self.ctx.store.list()]})

    def _v1_model(self, name: str) -> None:
        info = self.ctx.store.find(name)
        if info is None:
            raise openai_error(404, f"model '{name}' not found")
        self.send_json(200, self._openai_model(info))

    def _openai_info(self, body: dict[str, Any]) -> tuple[str, ModelInfo]:
        name = body.get("model")
        info = self.ctx.store.find(name) if isinstance(name, str) and name else None
        if info is None:
            raise openai_error(404, f"model '{name}' not found")
        try:
            self._load(info, None)
        except HTTPError as err:
            raise openai_error(err.status, str(err.body.get("error"))) from err
        return str(name), info

    @classmethod
    def _next_id(cls, prefix: str) -> str:
        with cls._counter_lock:
            cls._counter += 1
            return f"{prefix}-{cls._counter}"

    def _v1_chat(self) -> None:
        body = self._openai_body()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise openai_error(400, "[] is too short - 'messages'")
        name, _info = self._openai_info(body)
        self._v1_reply(body, name, "chat.completion", len(messages),
                       lambda text, final: {"message" if final else "delta":
                                            {"role": "assistant", "content": text}})

    def _v1_completions(self) -> None:
        body = self._openai_body()
        if not isinstance(body.get("prompt"), str):
            raise openai_error(400, "prompt is required")
        name, _info = self._openai_info(body)
        self._v1_reply(body, name, "text_completion", max(1, len(body["prompt"].split())),
                       lambda text, _final: {"text": text})

    def _v1_reply(self, body: dict[str, Any], name: str, kind: str, prompt_tokens: int,
                  piece: Callable[[str, bool], dict[str, Any]]) -> None:
        ident = self._next_id("chatcmpl" if kind == "chat.completion" else "cmpl")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(REPLY_TOKENS),
                 "total_tokens": prompt_tokens + len(REPLY_TOKENS)}
        head = {"id": ident, "created": int(time.time()), "model": name, "system_fingerprint": "fp_ollama"}
        if body.get("stream") is True:
            obj = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"

            def event(text: str, finish: str | None) -> bytes:
                chunk = {**head, "object": obj, "choices": [{"index": 0, **piece(text, False),
                                                              "finish_reason": finish}]}
                return b"data: " + dumps(chunk) + b"\n\n"

            events = [event(tok, None) for tok in REPLY_TOKENS] + [event("", "stop")]
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(b"data: " + dumps({**head, "object": obj, "choices": [], "usage": usage}) + b"\n\n")
            self.send_stream("text/event-stream", iter([*events, b"data: [DONE]\n\n"]))
            return
        self.send_json(200, {**head, "object": kind, "choices": [{"index": 0, **piece(REPLY_TEXT, True),
                                                                    "finish_reason": "stop"}], "usage": usage})

    def _v1_embeddings(self) -> None:
        body = self._openai_body()
        if body.get("input") in (None, "", []):
            raise openai_error(400, "invalid input")
        model = body.get("model")
        if not isinstance(model, str) or self.ctx.store.find(model) is None:
            raise openai_error(404, f"model '{model}' not found")
        try:
            name, _info, vectors, tokens = self._embed_vectors(body)
        except HTTPError as err:
            raise openai_error(err.status, str(err.body.get("error"))) from err
        as_b64 = str(body.get("encoding_format") or "").lower() == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if as_b64 else v}
                for i, v in enumerate(vectors)]
        self.send_json(200, {"object": "list", "data": data, "model": name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
