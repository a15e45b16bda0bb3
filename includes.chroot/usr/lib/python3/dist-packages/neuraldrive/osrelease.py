"""Which NeuralDrive release this device runs: os-release(5)'s IMAGE_ID and IMAGE_VERSION, which the
build's hook 02-os-release appends to Debian's /usr/lib/os-release. An upgraded stick reports the
new release here while its persistence partition stays as it was."""

from __future__ import annotations

import shlex
from pathlib import Path

OS_RELEASE = Path("/usr/lib/os-release")
IMAGE_ID = "neuraldrive"


def os_release_fields(path: Path = OS_RELEASE) -> dict[str, str]:
    """KEY=VALUE lines, values unquoted as os-release(5) says (shell quoting); unreadable: empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        fields[key] = words[0] if len(words) == 1 else ""
    return fields


def image_version(path: Path = OS_RELEASE) -> str | None:
    """IMAGE_VERSION of a NeuralDrive image, None on anything else (or without the field)."""
    fields = os_release_fields(path)
    if fields.get("IMAGE_ID") != IMAGE_ID:
        return None
    return fields.get("IMAGE_VERSION") or None
