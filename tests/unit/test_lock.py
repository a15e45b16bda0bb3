"""The artifact lock: parsing Ollama's sha256sum.txt, pinning, resolving per profile and source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from builder.artifacts.lock import (
    BASE_ARCHIVE,
    ROCM_ARCHIVE,
    parse_sha256sum,
    pin_release,
    read_lock,
    resolve_artifacts,
)
from builder.errors import LockError
from builder.profile import Profile, load_profile

SUMS = Path(__file__).resolve().parents[1] / "fixtures/releases/sha256sum-v0.32.7.txt"
BASE_SHA = "ed1e39fe8fea90bd7f4c723bd949a2cea3153e111220ec0a183ea5b8dc8b2cae"
ROCM_SHA = "9b8a7c6d5e4f30211234567890abcdef1234567890abcdef1234567890abcdef"


def test_parse_release_format_with_dot_slash_prefix() -> None:
    sums = parse_sha256sum(SUMS.read_text())
    assert sums[BASE_ARCHIVE] == BASE_SHA
    assert sums["install.sh"].startswith("fedcba")
    assert "./ollama-linux-amd64.tar.zst" not in sums


def test_parse_binary_marker_and_rejects_garbage() -> None:
    assert parse_sha256sum(f"{BASE_SHA} *{BASE_ARCHIVE}\n") == {BASE_ARCHIVE: BASE_SHA}
    with pytest.raises(LockError, match="line 2"):
        parse_sha256sum(f"{BASE_SHA}  a\nnot-a-hash  b\n")


def test_pin_release_writes_lock_atomically(tmp_path: Path) -> None:
    lock = tmp_path / "artifacts.lock.yaml"
    files = pin_release("0.32.7", SUMS.read_text(), lock)
    assert files == {BASE_ARCHIVE: BASE_SHA, ROCM_ARCHIVE: ROCM_SHA}
    data = read_lock(lock)
    assert data["ollama"]["base_url"] == "https://github.com/ollama/ollama/releases/download/v0.32.7/"
    assert [p.name for p in tmp_path.iterdir()] == ["artifacts.lock.yaml"]


def test_truncated_or_empty_sums_are_refused(tmp_path: Path) -> None:
    text = SUMS.read_text()
    with pytest.raises(LockError, match=r"^https://x/sha256sum.txt: truncated \(last line has no newline"):
        pin_release("0.32.7", text[:-30], tmp_path / "l.yaml", source="https://x/sha256sum.txt")
    with pytest.raises(LockError, match=r"sha256sum\.txt: empty"):
        pin_release("0.32.7", "\n", tmp_path / "l.yaml")
    assert not (tmp_path / "l.yaml").exists()


def test_pin_release_without_zst_archive(tmp_path: Path) -> None:
    with pytest.raises(LockError, match=re.escape("lists no ollama-linux-amd64.tar.zst")):
        pin_release("0.13.0", f"{BASE_SHA}  ./ollama-linux-amd64.tgz\n", tmp_path / "l.yaml")
    assert not (tmp_path / "l.yaml").exists()


def rocm_profile(tmp_path: Path) -> Profile:
    path = tmp_path / "amd-rocm.yaml"
    path.write_text("extends: amd\ngpu:\n  amd:\n    backend: rocm\n")
    return load_profile(str(path))


def test_release_profiles_resolve_to_official_pins(tmp_path: Path) -> None:
    lock = tmp_path / "lock.yaml"
    pin_release("0.32.7", SUMS.read_text(), lock)
    (nvidia,) = resolve_artifacts(load_profile("nvidia"), lock_path=lock)
    assert nvidia.official and nvidia.sha256 == BASE_SHA and nvidia.source == nvidia.url
    (amd,) = resolve_artifacts(load_profile("amd"), lock_path=lock)  # Vulkan: the main archive only
    assert amd == nvidia
    base, rocm = resolve_artifacts(rocm_profile(tmp_path), lock_path=lock)
    assert (base.name, rocm.name) == (BASE_ARCHIVE, ROCM_ARCHIVE)
    assert rocm.url.endswith("/v0.32.7/ollama-linux-amd64-rocm.tar.zst") and rocm.official


def test_unpinned_rocm_refuses_clearly(tmp_path: Path) -> None:
    lock = tmp_path / "lock.yaml"
    lock.write_text(yaml.safe_dump({"ollama": {"version": "0.32.7", "base_url": "https://github.com/ollama/ollama/releases/download/v0.32.7/",
                                               "files": {BASE_ARCHIVE: BASE_SHA, ROCM_ARCHIVE: None}}}))
    with pytest.raises(LockError, match=re.escape("not pinned yet; run `python build.py lock 0.32.7`")):
        resolve_artifacts(rocm_profile(tmp_path), lock_path=lock)


def test_mirror_and_local_override_keep_the_pin(tmp_path: Path) -> None:
    lock = tmp_path / "lock.yaml"
    pin_release("0.32.7", SUMS.read_text(), lock)
    (mirrored,) = resolve_artifacts(load_profile("cpu"), lock_path=lock, mirror="http://127.0.0.1:9/assets/")
    assert mirrored.source == "http://127.0.0.1:9/assets/ollama-linux-amd64.tar.zst"
    assert mirrored.official and mirrored.sha256 == BASE_SHA
    (local,) = resolve_artifacts(load_profile("cpu"), lock_path=lock, archive_override="/srv/o.tar.zst")
    assert local.source == "/srv/o.tar.zst" and local.official and local.sha256 == BASE_SHA


def test_other_archive_with_its_own_sha_is_unofficial(tmp_path: Path) -> None:
    lock = tmp_path / "lock.yaml"
    pin_release("0.32.7", SUMS.read_text(), lock)
    (other,) = resolve_artifacts(load_profile("cpu"), lock_path=lock, archive_override="/srv/o.tar.zst",
                                 override_sha256="ab" * 32)
    assert not other.official and other.sha256 == "ab" * 32
    with pytest.raises(LockError, match="not a sha256"):
        resolve_artifacts(load_profile("cpu"), lock_path=lock, archive_override="/x", override_sha256="xyz")


def test_test_profile_pins_the_double_in_the_profile() -> None:
    (double,) = resolve_artifacts(load_profile("test"))
    assert not double.official and double.version == "0.0.0-testdouble"


def test_shipped_lock_is_valid() -> None:
    entry = read_lock()["ollama"]
    assert entry["base_url"] == f"https://github.com/ollama/ollama/releases/download/v{entry['version']}/"
    assert entry["files"][BASE_ARCHIVE]


def test_broken_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / "lock.yaml"
    lock.write_text("ollama:\n  version: 1\n")
    with pytest.raises(LockError, match=r"must have version, base_url and files"):
        read_lock(lock)
    lock.write_text("ollama:\n  version: '1'\n  base_url: x\n  files:\n    a: 123\n")
    with pytest.raises(LockError, match=re.escape("ollama.files.a")):
        read_lock(lock)
