"""Fetch → verify sha256 → cache. Nothing unverified is ever used or left in the cache.

The cache is keyed by sha256 (`<cache>/artifacts/<sha256>`); a partial download lives in
`<cache>/artifacts/partial/<sha256>.part` until it verifies, so an interrupted download resumes
with an HTTP Range request. A cache hit does no network I/O.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

from builder.artifacts.lock import Artifact
from builder.console import ProgressLine, debug, download_status, format_bytes, info
from builder.errors import ArtifactError
from builder.files import exclusive_lock, fsync_dir, sha256_file

CHUNK = 1 << 20
# Small network reads: whatever arrived before a connection drops is kept for the resume.
NET_CHUNK = 1 << 14


@dataclass(frozen=True)
class FetchPolicy:
    offline: bool = False
    retries: int = 4
    backoff: float = 1.0  # seconds, doubled per attempt
    connect_timeout: float = 10.0
    # Seconds without a single byte before a download counts as stalled.
    stall_timeout: float = 30.0


def cache_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "artifacts" / sha256


def fetch_artifact(artifact: Artifact, cache_dir: Path, policy: FetchPolicy = FetchPolicy()) -> Path:
    """Return the verified cached file for `artifact`, downloading or copying it if needed."""
    final = cache_path(cache_dir, artifact.sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    # One fetch per artifact at a time: a second build waits, then finds it cached.
    with exclusive_lock(final.parent.parent / "locks" / f"{artifact.sha256}.lock",
                        f"waiting for another build fetching {artifact.name}"):
        return _fetch_locked(artifact, final, policy)


def _fetch_locked(artifact: Artifact, final: Path, policy: FetchPolicy) -> Path:
    if final.is_file():
        # Re-verified on every use: a cache entry damaged since it was written (disk fault, a truncated
        # copy, someone's edit) is evicted and fetched again, never trusted.
        actual = sha256_file(final)
        if actual == artifact.sha256:
            debug(f"cache hit {artifact.name} ({artifact.sha256[:12]}, verified)")
            return final
        final.unlink()
        info(f"  cached {artifact.name} is damaged (sha256 {actual[:12]}…, expected {artifact.sha256[:12]}…): "
             "removed; fetching it again")
    partial_dir = final.parent / "partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = partial_dir / f"{artifact.sha256}.part"
    source = artifact.source
    scheme = urlparse(source).scheme
    try:
        if scheme in ("http", "https"):
            if policy.offline:
                raise ArtifactError(
                    f"{artifact.name}: not in the cache ({final}) and --offline forbids downloading {source}"
                )
            _download(source, part, policy)
        else:
            local = Path(source[len("file://"):] if scheme == "file" else source)
            if not local.is_file():
                raise ArtifactError(f"{artifact.name}: local file {local} does not exist")
            info(f"  copying {local} ({format_bytes(local.stat().st_size)})")
            shutil.copyfile(local, part)
        actual = sha256_file(part)
        if actual != artifact.sha256:
            raise ArtifactError(
                f"{artifact.name}: sha256 mismatch from {source}: expected {artifact.sha256}, got {actual}"
            )
    except ArtifactError:
        # A wrong or unreadable body must not be resumed from: drop it.
        part.unlink(missing_ok=True)
        raise
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise ArtifactError(f"{artifact.name}: {exc}") from None
    with part.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, final)
    fsync_dir(final.parent)
    return final


def _download(url: str, part: Path, policy: FetchPolicy) -> None:
    """Stream `url` into `part`, resuming what is there; retry transient failures with backoff."""
    last_error = ""
    for attempt in range(policy.retries + 1):
        if attempt:
            delay = policy.backoff * 2 ** (attempt - 1)
            info(f"  retrying in {delay:.0f}s ({last_error})")
            time.sleep(delay)
        try:
            _download_once(url, part, policy)
            return
        except _PermanentError as exc:
            raise ArtifactError(str(exc)) from None
        except (requests.RequestException, _TransientError) as exc:
            last_error = _describe(exc)
    raise ArtifactError(f"{url}: giving up after {policy.retries + 1} attempts: {last_error}")


class _TransientError(Exception):
    pass


class _PermanentError(Exception):
    pass


def _describe(exc: Exception) -> str:
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc):
        return "server stalled (no data within the timeout)"
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed: {exc.__class__.__name__}"
    return str(exc)


def _download_once(url: str, part: Path, policy: FetchPolicy) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = (policy.connect_timeout, policy.stall_timeout)
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and have:
            # Our partial file is longer than the resource: start over.
            part.unlink()
            raise _TransientError("server refused our resume offset (416)")
        if response.status_code in (404, 410, 401, 403):
            raise _PermanentError(f"{url}: HTTP {response.status_code} {response.reason}")
        if response.status_code >= 400:
            raise _TransientError(f"HTTP {response.status_code} {response.reason}")
        resumed = response.status_code == 206
        if have and not resumed:
            debug("server ignored Range; downloading from the start")
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if resumed else "wb"
        progress = ProgressLine()
        started = time.monotonic()
        done = have
        with part.open(mode) as out:
            for chunk in response.iter_content(NET_CHUNK):
                out.write(chunk)
                done += len(chunk)
                progress.update(download_status(done, total, started))
        progress.update(download_status(done, total, started), force=True)
        progress.close()
        if total is not None and done < total:
            raise _TransientError(f"connection closed after {done} of {total} bytes")
