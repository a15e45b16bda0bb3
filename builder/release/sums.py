"""SHA256SUMS: `sha256sum`'s format (`<hex>  <name>`), one line per file of the release, sorted by
name, so `sha256sum -c SHA256SUMS` works as well as `build.py verify`."""

from __future__ import annotations

import re
from pathlib import Path

from builder.files import atomic_write_text, sha256_file
from builder.release.errors import ReleaseInputError

SUMS = "SHA256SUMS"
SIGNATURE_SUFFIX = ".asc"
_LINE = re.compile(r"([0-9a-f]{64}) [ *]([^/\\]+)")


def write_sums(files: list[Path], target: Path) -> dict[str, str]:
    """Hash every file (all in target's directory) and write the list atomically."""
    sums = {}
    for path in sorted(files, key=lambda p: p.name):
        if path.parent.resolve() != target.parent.resolve():
            raise ReleaseInputError(f"{path}: not in {target.parent} (SHA256SUMS lists files beside it)")
        sums[path.name] = sha256_file(path)
    atomic_write_text(target, "".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return sums


def read_sums(path: Path) -> dict[str, str]:
    """name → sha256; any line that is not `<sha256>  <name>` is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReleaseInputError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ReleaseInputError(f"{path}: not a SHA256SUMS file (not UTF-8 text)") from None
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise ReleaseInputError(f"{path}: line {number}: not '<sha256>  <file name>': {line[:80]!r}")
        sums[match.group(2)] = match.group(1)
    if not sums:
        raise ReleaseInputError(f"{path}: lists no file")
    return sums
