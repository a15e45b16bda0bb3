"""The HTTP routes of llama-server the appliance uses, with llama.cpp's shapes and error bodies.

Sources (ggml-org/llama.cpp, tools/server/): server.cpp `llama_server` (route table), server-context.cpp
(handlers), server-task.cpp (OpenAI-compatible result shapes), server-common.cpp
`format_error_response` (error bodies), server-http.cpp (503 while loading, 404 body).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from testdouble.inference import REPLY_TOKENS, embedding

FINGERPRINT = "b10091-testdouble"  # Ollama's pinned llama.cpp build (LLAMA_CPP_VERSION)
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 500: "server_error",
               501: "not_supported_error", 503: "unavailable_error"}


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def error_body(code: int, message: str) -> dict[str, Any]:
    """format_error_response: {"error": {"code", "message", "type"}}."""
    return {"error": {"code": code, "message": message, "type": ERROR_TYPES[code]}}


class Model:
    """What the server knows once the model is loaded."""

    def __init__(self, alias: str, path: str, kv: dict[str, Any], params: int, size: int, n_ctx: int,
                 embeddings: bool) -> None:
        arch = str(kv.get("general.architecture") or "llama")
        self.alias, self.path, self.params, self.size = alias, path, params, size
        self.n_embd = int(kv.get(f"{arch}.embedding_length") or 384)
        self.n_ctx_train = int(kv.get(f"{arch}.context_length") or 4096)
        self.n_ctx = n_ctx or self.n_ctx_train  # -c 0: the model's own length
        self.embeddings = embeddings


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    model: Model | None = None  # None while loading
    counter = 0
    lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # log_server_r in server-http.cpp: one line per request
        print(f"srv  log_server_r: request: {self.command} {self.path} {self.client_address[0]} {code}",
              flush=True)

    def do_GET(self) -> None:
        self._dispatch({"/health": self._health, "/v1/health": self._health,
                        "/models": self._models, "/v1/models": self._models})

    def do_POST(self) -> None:
        self._dispatch({"/v1/chat/completions": self._chat, "/chat/completions": self._chat,
                        "/v1/completions": self._completions, "/completions": self._completions,
                        "/v1/embeddings": self._embeddings, "/embeddings": self._embeddings})

    def _dispatch(self, table: dict[str, Any]) -> None:
        path = self.path.split("?", 1)[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            handler = table.get(path)
            if handler is None:
                raise ApiError(404, "File Not Found")
            if self.server.model is None:  # every route, /health too, while the model loads
                raise ApiError(503, "Loading model")
            handler(self._json(body) if self.command == "POST" else {})
        except ApiError as err:
            self._send(err.code, error_body(err.code, err.message))

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:  # nlohmann's parse_error is not invalid_argument: 500
            raise ApiError(500, f"[json.exception.parse_error.101] parse error: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(500, "[json.exception.type_error.302] type must be object")
        return body

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: Iterator[dict[str, Any]]) -> None:
        """server-http.cpp streaming: `data: <json>\\n\\n` per chunk, then `data: [DONE]\\n\\n`."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in [b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events] + [
                b"data: [DONE]\n\n"]:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    @property
    def model(self) -> Model:
        assert self.server.model is not None
        return self.server.model

    def _health(self, _body: dict[str, Any]) -> None:
        self._send(200, {"status": "ok"})

    def _models(self, _body: dict[str, Any]) -> None:
        m = self.model
        self._send(200, {"models": [{"name": m.alias, "model": m.alias, "type": "model",
                                     "capabilities": ["completion"]}],
                         "object": "list",
                         "data": [{"id": m.alias, "object": "model", "created": int(time.time()),
                                   "owned_by": "llamacpp", "meta": {"n_ctx_train": m.n_ctx_train,
                                                                    "n_embd": m.n_embd, "n_params": m.params,
                                                                    "size": m.size}}]})

    def _next_id(self, prefix: str) -> str:
        with self.server.lock:
            self.server.counter += 1
            return f"{prefix}-testdouble{self.server.counter:08d}"

    def _tokens(self, body: dict[str, Any]) -> tuple[tuple[str, ...], str]:
        limit = body.get("max_tokens", body.get("n_predict"))
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(REPLY_TOKENS):
            return REPLY_TOKENS[:limit], "length"
        return REPLY_TOKENS, "stop"

    def _reply(self, body: dict[str, Any], chat: bool, prompt_tokens: int) -> None:
        tokens, finish = self._tokens(body)
        head = {"created": int(time.time()), "model": str(body.get("model") or self.model.alias),
                "system_fingerprint": FINGERPRINT, "id": self._next_id("chatcmpl" if chat else "cmpl")}
        usage = {"completion_tokens": len(tokens), "prompt_tokens": prompt_tokens,
                 "total_tokens": prompt_tokens + len(tokens)}
        text = "".join(tokens)
        if body.get("stream") is True:
            kind = "chat.completion.chunk" if chat else "text_completion"

            def chunk(choice: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
                return {"choices": [{"finish_reason": finish_reason, "index": 0, **choice}], **head, "object": kind}

            def events() -> Iterator[dict[str, Any]]:
                if chat:  # the first chunk names the role, content null
                    yield chunk({"delta": {"role": "assistant", "content": None}}, None)
                for token in tokens:
                    yield chunk({"delta": {"content": token}} if chat else {"text": token, "logprobs": None}, None)
                yield chunk({"delta": {}} if chat else {"text": "", "logprobs": None}, finish)
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield {"choices": [], **head, "object": kind, "usage": usage}

            self._sse(events())
            return
        choice = ({"message": {"role": "assistant", "content": text}} if chat
                  else {"text": text, "logprobs": None})
        self._send(200, {"choices": [{"finish_reason": finish, "index": 0, **choice}], **head,
                         "object": "chat.completion" if chat else "text_completion", "usage": usage})

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ApiError(400, "'messages' is required")
        if not messages:
            raise ApiError(400, "'messages' must not be empty")
        words = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        self._reply(body, True, max(1, words))

    def _completions(self, body: dict[str, Any]) -> None:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(400, "\"prompt\" must be provided")
        self._reply(body, False, max(1, len(prompt.split())))

    def _embeddings(self, body: dict[str, Any]) -> None:
        if not self.model.embeddings:
            raise ApiError(501, "This server does not support embeddings. Start it with `--embeddings`")
        given = body.get("input", body.get("content"))
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "\"input\" must be provided")
        tokens = sum(max(1, len(t.split())) for t in texts)
        data = [{"embedding": embedding(self.model.alias, t, self.model.n_embd), "index": i, "object": "embedding"}
                for i, t in enumerate(texts)]
        self._send(200, {"model": str(body.get("model") or self.model.alias), "object": "list",
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "data": data})
