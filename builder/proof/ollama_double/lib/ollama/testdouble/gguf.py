"""GGUF files as Ollama reads them (fs/ggml/gguf.go, v0.32.7): header, key/values, tensor infos,
and the config blob /api/create writes from them (server/create.go; format/format.go HumanNumber;
fs/ggml/type.go FileType)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

FILE_TYPES = ["F32", "F16", "Q4_0", "Q4_1", "Q4_1_F16", "Q4_2", "Q4_3", "Q8_0", "Q5_0", "Q5_1",
              "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
              "IQ2_XXS", "IQ2_XS", "Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
              "IQ3_M", "IQ2_S", "IQ2_M", "IQ4_XS", "IQ1_M", "BF16"]
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


class NotGGUFError(ValueError):
    def __str__(self) -> str:
        return "supplied file was not in GGUF format"  # create.go errOnlyGGUFSupported


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise NotGGUFError()
    return struct.unpack(fmt, data)[0]


def _read_str(handle: BinaryIO) -> str:
    return handle.read(_read(handle, "<Q")).decode("utf-8", "replace")


def _read_value(handle: BinaryIO, kind: int) -> Any:
    if kind == 8:
        return _read_str(handle)
    if kind == 9:
        item, count = _read(handle, "<I"), _read(handle, "<Q")
        return [_read_value(handle, item) for _ in range(count)]
    if kind not in _SCALARS:
        raise NotGGUFError()
    return _read(handle, _SCALARS[kind])


def read_gguf(path: Path) -> tuple[dict[str, Any], int]:
    """(key/values, parameter count) of a little-endian GGUF v2/v3 file."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise NotGGUFError()
        _version, tensors, count = _read(handle, "<I"), _read(handle, "<Q"), _read(handle, "<Q")
        kv = {}
        for _ in range(count):
            key = _read_str(handle)
            kv[key] = _read_value(handle, _read(handle, "<I"))
        params = 0
        for _ in range(tensors):
            _read_str(handle)
            dims = [_read(handle, "<Q") for _ in range(_read(handle, "<I"))]
            _read(handle, "<I")
            _read(handle, "<Q")
            n = 1
            for d in dims:
                n *= d
            params += n
    return kv, params


def human_number(n: int) -> str:
    """format.HumanNumber."""
    for scale, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.{decimals}f}{suffix}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def gguf_config(kv: dict[str, Any], params: int) -> dict[str, Any]:
    """The config blob a GGUF create writes (model.ConfigV2 fields)."""
    arch = str(kv.get("general.architecture") or "")
    ftype = kv.get("general.file_type")
    file_type = FILE_TYPES[ftype] if isinstance(ftype, int) and 0 <= ftype < len(FILE_TYPES) else "unknown"
    return {"model_format": "gguf", "model_family": arch, "model_families": [arch] if arch else None,
            "model_type": human_number(params), "file_type": file_type,
            "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
