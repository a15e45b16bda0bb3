"""Pins from a release's `sha256sum.txt`: read it (URL or file), and fill a pin the lock lacks.

A networked build whose profile needs an archive the lock has no sha256 for (a null or missing
entry) reads the release's `sha256sum.txt` — from the release's base URL, or from
`--artifact-mirror`, which stands in for the release site — checks every pin the lock already holds
against it, records the new pin (atomically) and goes on. `build.py lock` reads the same file
through `read_sums`.
"""

from __future__ import annotations

from pathlib import Path

import requests

from builder.artifacts import lock
from builder.artifacts.lock import BASE_ARCHIVE, parse_release_sums, read_lock, wanted_archives, write_lock
from builder.console import info
from builder.errors import LockError
from builder.profile.schema import Profile

SUMS_NAME = "sha256sum.txt"
MAX_SUMS_BYTES = 1 << 20  # a release lists a few dozen assets: anything bigger is not the file


def read_sums(source: str, offline: bool = False) -> str:
    """The text of a sha256sum.txt at an http(s) URL or a local path."""
    if not source.startswith(("http://", "https://")):
        try:
            return Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LockError(f"{source}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if offline:
        raise LockError(f"--offline: cannot download {source}")
    try:
        with requests.get(source, timeout=(10, 30), stream=True) as response:
            if response.status_code != 200:
                raise LockError(f"{source}: HTTP {response.status_code} {response.reason}")
            body = b""
            for chunk in response.iter_content(1 << 14):
                body += chunk
                if len(body) > MAX_SUMS_BYTES:
                    break
    except requests.exceptions.ChunkedEncodingError:  # also a body shorter than its Content-Length
        raise LockError(f"{source}: download cut short") from None
    except requests.RequestException as exc:
        raise LockError(f"{source}: {exc.__class__.__name__}") from None
    if len(body) > MAX_SUMS_BYTES:
        raise LockError(f"{source}: larger than {MAX_SUMS_BYTES} bytes, not a sha256sum.txt")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise LockError(f"{source}: not UTF-8 text") from None


def sums_url(base_url: str, mirror: str | None) -> str:
    return (mirror or base_url).rstrip("/") + "/" + SUMS_NAME


def pin_missing(profile: Profile, *, lock_path: Path | None = None, mirror: str | None = None,
                offline: bool = False, skip_base: bool = False) -> list[str]:
    """Pin what `profile` needs and the lock lacks; returns the names pinned now (none: no I/O).

    `skip_base`: the base archive comes with its own sha256 (`--ollama-sha256`), no pin needed.
    """
    if profile.ollama.archive is not None:
        return []
    lock_path = lock_path or lock.LOCK_FILE
    entry = read_lock(lock_path)["ollama"]
    files: dict[str, str | None] = dict(entry["files"])
    version = entry["version"]
    missing = [name for name in wanted_archives(profile)
               if files.get(name) is None and not (skip_base and name == BASE_ARCHIVE)]
    if not missing:
        return []
    if offline:
        raise LockError(f"{lock_path}: ollama.files.{missing[0]}: not pinned and --offline forbids reading "
                        f"the release's {SUMS_NAME}; run `python3 build.py lock {version}` where the network is")
    url = sums_url(entry["base_url"], mirror)
    sums = parse_release_sums(read_sums(url), url)
    for name, pinned in files.items():
        if pinned is not None and sums.get(name) != pinned:
            raise LockError(f"{url}: {name}: lists {sums.get(name) or 'no sha256'}, but {lock_path} pins "
                            f"{pinned}; refusing to pin v{version} from it")
    for name in missing:
        if name not in sums:
            raise LockError(f"{url}: lists no {name}; cannot pin it for profile {profile.name}")
        files[name] = sums[name]
    write_lock(version, entry["base_url"], files, lock_path,
               note=f"{', '.join(missing)} pinned at build time from {url}")
    for name in missing:
        info(f"  pinned {name} v{version} at build time: {sums[name]} (from {url}, written to {lock_path})")
    return missing


def pin_version(version: str, sums_source: str | None = None, offline: bool = False) -> dict[str, str | None]:
    """`build.py lock VERSION`: pin every archive of the release from its sha256sum.txt (or `sums_source`)."""
    source = sums_source or lock.release_sums_url(version.lstrip("v"))
    if offline and source.startswith(("http://", "https://")):
        raise LockError(f"--offline: cannot download {source}; pass --sums PATH")
    return lock.pin_release(version.lstrip("v"), read_sums(source), source=source)
