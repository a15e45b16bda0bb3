"""A missing pin never stops a networked build: taken from the release's sha256sum.txt (served here
from 127.0.0.1 as the mirror standing in for the release site) after every existing pin is checked
against it; a tampered, truncated or garbled file writes nothing; --offline names `build.py lock`."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import build
from builder.artifacts.lock import BASE_ARCHIVE, ROCM_ARCHIVE, read_lock
from builder.artifacts.pinning import pin_missing
from builder.errors import LockError
from builder.image.pipeline import ArtifactOptions, artifacts_for
from builder.image.publish import build_info
from builder.profile import Profile, load_profile

BASE_BYTES, ROCM_BYTES = b"base archive bytes\n", b"rocm archive bytes\n"
BASE_SHA, ROCM_SHA = (hashlib.sha256(b).hexdigest() for b in (BASE_BYTES, ROCM_BYTES))
OTHER = "ab" * 32
GOOD = (f"{OTHER}  ./OllamaSetup.exe\n{BASE_SHA}  ./{BASE_ARCHIVE}\n{ROCM_SHA}  ./{ROCM_ARCHIVE}\n"
        f"{OTHER}  ./install.sh\n")
SUMS = {
    "good": GOOD,
    "tampered": GOOD.replace(BASE_SHA, OTHER),
    "truncated": GOOD[: GOOD.index(ROCM_SHA) + 20],  # cut in the middle of the ROCm line
    "garbled": GOOD.replace(f"{ROCM_SHA}  ", "<html>  "),
    "no-rocm": f"{BASE_SHA}  ./{BASE_ARCHIVE}\n",
}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/short/sha256sum.txt":  # the connection drops before Content-Length
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[:40].encode())
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("releases")
    for name, text in SUMS.items():
        (root / name).mkdir()
        (root / name / "sha256sum.txt").write_text(text)
        (root / name / BASE_ARCHIVE).write_bytes(BASE_BYTES)
        (root / name / ROCM_ARCHIVE).write_bytes(ROCM_BYTES)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "config" / "artifacts.lock.yaml"
    path.parent.mkdir()
    path.write_text("# hand-written\n" + yaml.safe_dump({"ollama": {
        "version": "0.32.7", "base_url": "https://github.com/ollama/ollama/releases/download/v0.32.7/",
        "files": {BASE_ARCHIVE: BASE_SHA, ROCM_ARCHIVE: None}}}, sort_keys=False))
    return path


@pytest.fixture
def rocm_profile(tmp_path: Path) -> Path:
    path = tmp_path / "amd-rocm.yaml"
    path.write_text("extends: amd\ngpu:\n  amd:\n    backend: rocm\n")
    return path


def rocm(path: Path) -> Profile:
    return load_profile(str(path))


def test_missing_pin_taken_from_the_mirrors_sums(server: str, lock: Path, rocm_profile: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    options = ArtifactOptions(mirror=f"{server}/good/", lock_path=lock)
    base, rocm_artifact = artifacts_for(rocm(rocm_profile), options)
    assert (base.pinned_at_build, rocm_artifact.pinned_at_build) == (False, True)
    assert rocm_artifact.sha256 == ROCM_SHA and rocm_artifact.source == f"{server}/good/{ROCM_ARCHIVE}"
    assert rocm_artifact.url.startswith("https://github.com/ollama/ollama/releases/download/v0.32.7/")
    assert read_lock(lock)["ollama"]["files"] == {BASE_ARCHIVE: BASE_SHA, ROCM_ARCHIVE: ROCM_SHA}
    assert sorted(p.name for p in lock.parent.iterdir()) == ["artifacts.lock.yaml"]  # atomic: no temp left
    lines = [line for line in capsys.readouterr().err.splitlines() if "pinned" in line]
    assert lines == [f"  pinned {ROCM_ARCHIVE} v0.32.7 at build time: {ROCM_SHA} "
                     f"(from {server}/good/sha256sum.txt, written to {lock})"]
    info = build_info(rocm(rocm_profile), [base, rocm_artifact], "1:20250505", 0, {})
    assert [a["pinned_at_build"] for a in json.loads(json.dumps(info))["artifacts"]] == [False, True]
    # Pinned now: the next build reads nothing (the mirror may be gone).
    again = artifacts_for(rocm(rocm_profile), ArtifactOptions(mirror="http://127.0.0.1:9/", lock_path=lock))
    assert [a.pinned_at_build for a in again] == [False, False]


@pytest.mark.parametrize(("case", "message"), [
    ("tampered", f"tampered/sha256sum.txt: {BASE_ARCHIVE}: lists {OTHER}, but {{lock}} pins {BASE_SHA}; "
                 "refusing to pin v0.32.7 from it"),
    ("truncated", "truncated/sha256sum.txt: truncated (last line has no newline: "),
    ("garbled", "garbled/sha256sum.txt: line 3: not '<sha256>  <file>': '<html>  ./ollama-linux-amd64-rocm.tar.zst'"),
    ("no-rocm", f"no-rocm/sha256sum.txt: lists no {ROCM_ARCHIVE}; cannot pin it for profile amd-rocm"),
    ("short", "short/sha256sum.txt: download cut short"),
    ("missing", "missing/sha256sum.txt: HTTP 404"),
])
def test_bad_sums_write_nothing(server: str, lock: Path, rocm_profile: Path, case: str, message: str) -> None:
    before = lock.read_bytes()
    with pytest.raises(LockError) as caught:
        pin_missing(rocm(rocm_profile), lock_path=lock, mirror=f"{server}/{case}")
    text = str(caught.value)
    assert "\n" not in text and caught.value.exit_code == 2
    assert text.startswith(f"{server}/{case}/sha256sum.txt: "), text
    assert message.replace("{lock}", str(lock)) in text, text
    assert lock.read_bytes() == before and sorted(p.name for p in lock.parent.iterdir()) == ["artifacts.lock.yaml"]


def test_a_pin_the_sums_do_not_list_is_a_mismatch(server: str, tmp_path: Path, rocm_profile: Path) -> None:
    lock = tmp_path / "lock.yaml"
    lock.write_text(yaml.safe_dump({"ollama": {"version": "0.32.7", "base_url": "https://x/", "files": {
        BASE_ARCHIVE: BASE_SHA, "ollama-linux-arm64.tar.zst": OTHER, ROCM_ARCHIVE: None}}}))
    before = lock.read_bytes()
    with pytest.raises(LockError, match=rf"no-rocm/sha256sum.txt: ollama-linux-arm64.tar.zst: lists no sha256, "
                                        rf"but {lock} pins {OTHER}"):
        pin_missing(rocm(rocm_profile), lock_path=lock, mirror=f"{server}/no-rocm")
    assert lock.read_bytes() == before


def test_offline_names_the_lock_command(lock: Path, rocm_profile: Path) -> None:
    with pytest.raises(LockError) as caught:
        pin_missing(rocm(rocm_profile), lock_path=lock, mirror="http://127.0.0.1:9/", offline=True)
    assert str(caught.value) == (f"{lock}: ollama.files.{ROCM_ARCHIVE}: not pinned and --offline forbids reading "
                                 "the release's sha256sum.txt; run `python3 build.py lock 0.32.7` where the network is")


def test_nothing_missing_reads_nothing(lock: Path) -> None:
    assert pin_missing(load_profile("amd"), lock_path=lock, mirror="http://127.0.0.1:9/", offline=True) == []
    assert pin_missing(load_profile("test"), lock_path=lock, offline=True) == []  # pinned in the profile


def test_missing_base_entry_is_pinned_too(server: str, tmp_path: Path) -> None:
    lock = tmp_path / "lock.yaml"
    lock.write_text(yaml.safe_dump({"ollama": {"version": "0.32.7", "base_url": "https://x/", "files": {}}}))
    assert pin_missing(load_profile("cpu"), lock_path=lock, mirror=f"{server}/good") == [BASE_ARCHIVE]
    assert read_lock(lock)["ollama"]["files"] == {BASE_ARCHIVE: BASE_SHA}


def test_cli_fetch_pins_then_downloads(server: str, lock: Path, rocm_profile: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builder.artifacts.lock.LOCK_FILE", lock)
    runner = CliRunner()
    args = ["fetch", "--profile", str(rocm_profile), "--cache-dir", str(tmp_path / "cache")]
    offline = runner.invoke(build.cli, [*args, "--offline"])
    assert offline.exit_code == 2 and offline.output.count("\n") == 1
    assert "run `python3 build.py lock 0.32.7`" in offline.output
    tampered = runner.invoke(build.cli, [*args, "--artifact-mirror", f"{server}/tampered/"])
    assert tampered.exit_code == 2 and "Traceback" not in tampered.output
    assert tampered.output.strip().splitlines()[-1].startswith(f"error: {server}/tampered/sha256sum.txt: ")
    good = runner.invoke(build.cli, [*args, "--artifact-mirror", f"{server}/good/"])
    assert good.exit_code == 0, good.output
    assert f"pinned {ROCM_ARCHIVE} v0.32.7 at build time" in good.output
    assert f"{ROCM_SHA}  {tmp_path / 'cache'}/artifacts/{ROCM_SHA}" in good.output


def test_lock_command_shares_the_checks(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "lock.yaml"
    monkeypatch.setattr("builder.artifacts.lock.LOCK_FILE", lock)
    runner = CliRunner()
    bad = runner.invoke(build.cli, ["lock", "0.32.7", "--sums", f"{server}/truncated/sha256sum.txt"])
    assert bad.exit_code == 2 and "truncated (last line has no newline" in bad.output and not lock.exists()
    good = runner.invoke(build.cli, ["lock", "0.32.7", "--sums", f"{server}/good/sha256sum.txt"])
    assert good.exit_code == 0, good.output
    assert read_lock(lock)["ollama"]["files"] == {BASE_ARCHIVE: BASE_SHA, ROCM_ARCHIVE: ROCM_SHA}
