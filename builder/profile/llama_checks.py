"""Checks on the profile's llama_server section (the values llama-server's command line gets)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from builder import facts

if TYPE_CHECKING:
    from builder.profile.schema import LlamaServer

# llama.cpp common/arg.cpp: `-fa, --flash-attn [on|off|auto]` takes a value since b6325 (a bare
# `-fa` would swallow the next argument).
FLASH_ATTN = ("on", "off", "auto")
RANGES: dict[str, tuple[int, int]] = {
    "n_gpu_layers": (0, 4096),
    "ctx_size": (0, 1 << 24),  # 0: the model's own context length
    "batch_size": (1, 1 << 20),
    "threads": (1, 4096),
    "parallel": (1, 256),
}
# The same names Ollama accepts (builder/profile/checks.py _MODEL).
_MODEL = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?(:[A-Za-z0-9._-]{1,128})?")
_STORE = facts.MODELS_DIR.rstrip("/")
_PATH = re.compile(re.escape(_STORE) + r"(/[A-Za-z0-9_][A-Za-z0-9._+-]*)+\.gguf")


def is_model_reference(text: str) -> bool:
    """An Ollama model name, or a plain .gguf path under the model store (no `..`)."""
    if text.startswith("/"):
        return bool(_PATH.fullmatch(text)) and ".." not in text.split("/")
    return bool(_MODEL.fullmatch(text))


def check_llama_server(section: LlamaServer, bad: Any) -> None:
    for key, (low, high) in RANGES.items():
        value = getattr(section, key)
        if value is not None and not low <= value <= high:
            raise bad(f"llama_server.{key}", f"{value} is not in {low}-{high}")
    if section.flash_attn not in FLASH_ATTN:
        raise bad("llama_server.flash_attn", f"{section.flash_attn!r} is not one of {', '.join(FLASH_ATTN)}")
    if section.model and not is_model_reference(section.model):
        raise bad("llama_server.model", f"{section.model!r} is neither an Ollama model name (name[:tag]) nor a "
                  f".gguf path under {_STORE}/")
    if section.enabled and not section.model:
        raise bad("llama_server.model", "required when llama_server.enabled is true")
