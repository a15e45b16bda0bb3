"""The artifact lock: which engine archives a build uses, each pinned by URL and sha256.

`resolve_artifacts` turns a profile (+ CLI overrides) into the list of archives to fetch;
`pin_release` writes a new version into the lock from the release's own `sha256sum.txt`
(builder/artifacts/pinning.py fetches it, and fills a missing pin during a networked build).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from builder.errors import LockError
from builder.facts import OFFICIAL_OLLAMA_URL_PREFIX
from builder.files import ROOT, atomic_write_text
from builder.profile.schema import Profile

LOCK_FILE = ROOT / "config" / "artifacts.lock.yaml"
BASE_ARCHIVE = "ollama-linux-amd64.tar.zst"
ROCM_ARCHIVE = "ollama-linux-amd64-rocm.tar.zst"
_SHA256 = re.compile(r"[0-9a-f]{64}")  # always fullmatch: `$` accepts a trailing newline
_OFFICIAL = re.compile(
    re.escape(OFFICIAL_OLLAMA_URL_PREFIX) + r"v[0-9][0-9A-Za-z.+-]*/ollama-linux-amd64[a-z-]*\.tar\.zst$"
)


@dataclass(frozen=True)
class Artifact:
    """One file the build needs: where it comes from and what it must hash to."""

    name: str  # file name as published, e.g. ollama-linux-amd64.tar.zst
    version: str
    url: str  # the pinned (canonical) URL
    sha256: str
    source: str  # where this build actually reads it from: the URL, a mirror URL or a local path
    pinned_at_build: bool = False  # the lock had no pin: this build took it from sha256sum.txt

    @property
    def official(self) -> bool:
        """True when the pin itself is an official Ollama release asset (mirrors may still serve it)."""
        return bool(_OFFICIAL.match(self.url))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "official": self.official}


def read_lock(path: Path | None = None) -> dict[str, Any]:
    path = path or LOCK_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LockError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise LockError(f"{path}: not valid YAML ({exc})") from None
    entry = data.get("ollama") if isinstance(data, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        raise LockError(f"{path}: ollama: must have version, base_url and files")
    for key in ("version", "base_url"):
        if not isinstance(entry.get(key), str):
            raise LockError(f"{path}: ollama.{key}: missing or not a string")
    files: dict[str, Any] = entry["files"]
    for name, digest in files.items():
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise LockError(f"{path}: ollama.files.{name}: {digest!r} is not a sha256")
    result: dict[str, Any] = data
    return result


def wanted_archives(profile: Profile) -> list[str]:
    """The archives a profile installs, in order: the base, then ROCm for the rocm backend."""
    return [BASE_ARCHIVE] + ([ROCM_ARCHIVE] if profile.gpu.amd.backend == "rocm" else [])


def resolve_artifacts(
    profile: Profile,
    *,
    lock_path: Path | None = None,
    mirror: str | None = None,
    archive_override: str | None = None,
    override_sha256: str | None = None,
) -> list[Artifact]:
    """The archives a profile needs, in install order (base first, then ROCm for AMD).

    `mirror` replaces everything before the file name (a local or air-gapped mirror of the
    release assets); `archive_override` is a path or URL for the base archive, verified against
    `override_sha256` when given (which makes the artifact unofficial unless it equals the pin).
    """
    wanted = wanted_archives(profile)
    pins: dict[str, tuple[str, str, str | None]] = {}
    if profile.ollama.archive is not None:
        pin = profile.ollama.archive
        pins[BASE_ARCHIVE] = (pin.version, pin.url, pin.sha256)
    else:
        lock_path = lock_path or LOCK_FILE
        entry = read_lock(lock_path)["ollama"]
        base_url = entry["base_url"].rstrip("/") + "/"
        for name in wanted:
            if name not in entry["files"]:
                raise LockError(f"{lock_path}: ollama.files: has no entry for {name}")
            pins[name] = (entry["version"], base_url + name, entry["files"][name])

    artifacts = []
    for name in wanted:
        if name not in pins:
            raise LockError(f"{profile.source}: ollama.archive: pins only {BASE_ARCHIVE}; AMD needs the lock file")
        version, url, digest = pins[name]
        source = url if mirror is None else mirror.rstrip("/") + "/" + name
        if name == BASE_ARCHIVE and archive_override is not None:
            source = archive_override
            if override_sha256 is not None:
                if not _SHA256.fullmatch(override_sha256):
                    raise LockError(f"--ollama-sha256: {override_sha256!r} is not a sha256")
                if override_sha256 != digest:
                    url, version, digest = f"file://{archive_override}", "unpinned", override_sha256
        if digest is None:
            raise LockError(
                f"{lock_path}: ollama.files.{name}: not pinned yet; run `python build.py lock {version}`"
            )
        artifacts.append(Artifact(name=name, version=version, url=url, sha256=digest, source=source))
    return artifacts


def parse_release_sums(text: str, source: str) -> dict[str, str]:
    """`parse_sha256sum`, refusing an empty or truncated file (sha256sum ends every line with a
    newline); errors name `source`."""
    if not text.strip():
        raise LockError(f"{source}: empty")
    if not text.endswith("\n"):
        last = text.splitlines()[-1]
        raise LockError(f"{source}: truncated (last line has no newline: {last[:80]!r})")
    try:
        return parse_sha256sum(text)
    except LockError as exc:
        raise LockError(f"{source}: {str(exc).removeprefix('sha256sum.txt: ')}") from None


def parse_sha256sum(text: str) -> dict[str, str]:
    """Parse `sha256sum` output as Ollama publishes it (`<hex>  ./name`, maybe `*name`)."""
    sums: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not _SHA256.fullmatch(parts[0].lower()):
            raise LockError(f"sha256sum.txt: line {number}: not '<sha256>  <file>': {line[:80]!r}")
        name = parts[1].lstrip("*")
        name = name[2:] if name.startswith("./") else name
        sums[name] = parts[0].lower()
    return sums


def pin_release(version: str, sums_text: str, lock_path: Path | None = None,
                source: str = "sha256sum.txt") -> dict[str, str | None]:
    """Record `version` and the archives' sha256 from its sha256sum.txt; written atomically."""
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", version):
        raise LockError(f"version: {version!r} is not a release version (e.g. 0.32.7)")
    sums = parse_release_sums(sums_text, source)
    if BASE_ARCHIVE not in sums:
        raise LockError(f"sha256sum.txt of v{version}: lists no {BASE_ARCHIVE} (releases before 0.14 ship .tgz)")
    files = {name: sums.get(name) for name in (BASE_ARCHIVE, ROCM_ARCHIVE)}
    write_lock(version, f"{OFFICIAL_OLLAMA_URL_PREFIX}v{version}/", files, lock_path)
    return files


def write_lock(version: str, base_url: str, files: dict[str, str | None], lock_path: Path | None = None,
               note: str = "") -> None:
    data = {"ollama": {"version": version, "base_url": base_url, "files": files}}
    header = (
        "# Pinned engine archives, as Ollama publishes them on its GitHub releases.\n"
        "# Written by: python build.py lock VERSION   (from the release's sha256sum.txt)\n"
        + "".join(f"# {line}\n" for line in note.splitlines())
    )
    atomic_write_text(lock_path or LOCK_FILE, header + yaml.safe_dump(data, sort_keys=False))


def release_sums_url(version: str) -> str:
    return f"{OFFICIAL_OLLAMA_URL_PREFIX}v{version}/sha256sum.txt"

