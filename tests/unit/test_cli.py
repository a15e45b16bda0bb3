"""The CLI as a user runs it (click's CliRunner): exit codes, one-line errors, no traceback."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import build
from builder.profile import load_profile
from builder.proof.ollama_double.package import build_archive

SUMS = Path(__file__).resolve().parents[1] / "fixtures/releases/sha256sum-v0.32.7.txt"


def run(*args: str) -> Result:
    return CliRunner().invoke(build.cli, list(args))


@pytest.fixture(scope="module")
def served_double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("serve")
    archive = build_archive(directory)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined, method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", archive
    httpd.shutdown()


@pytest.mark.parametrize("command", ["iso", "tree", "fetch", "lock", "clean", "test", "boot", "usb", "bench"])
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_bench_options() -> None:
    shown = " ".join(run("bench", "--help").output.split())
    assert "--no-reference" in shown and "--cache-dir" in shown
    assert "(the figures are medians). [default: 3; x>=1]" in shown  # the median of 3
    bad = run("bench", "--boot-runs", "0")
    assert bad.exit_code == 2 and "--boot-runs" in bad.output


def test_bad_profile_is_exit_2_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: default\ngateway:\n  port: nope\n")
    result = run("tree", "--profile", str(bad), "--no-artifacts", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {bad}: gateway.port: must be an integer, not 'nope'"]
    assert "Traceback" not in result.output


def test_unknown_profile_name(tmp_path: Path) -> None:
    result = run("fetch", "--profile", "nope", "--cache-dir", str(tmp_path))
    assert result.exit_code == 2 and "no such profile" in result.output


def test_fetch_test_profile_from_local_mirror(served_double: tuple[str, Path], tmp_path: Path) -> None:
    url, archive = served_double
    result = run("fetch", "--profile", "test", "--cache-dir", str(tmp_path), "--artifact-mirror", url)
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert f"{digest}  {tmp_path}/artifacts/{digest}" in result.output
    # Second time: cache hit even offline, with the mirror gone.
    again = run("fetch", "--profile", "test", "--cache-dir", str(tmp_path), "--offline",
                "--artifact-mirror", "http://127.0.0.1:9/")
    assert again.exit_code == 0, again.output


def test_offline_with_empty_cache_is_exit_1(tmp_path: Path) -> None:
    result = run("fetch", "--profile", "test", "--cache-dir", str(tmp_path), "--offline")
    assert result.exit_code == 1
    assert "--offline forbids downloading" in result.output


def test_release_profile_refuses_unofficial_archive(served_double: tuple[str, Path], tmp_path: Path) -> None:
    _, archive = served_double
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    args = ["fetch", "--profile", "cpu", "--cache-dir", str(tmp_path), "--ollama-archive", str(archive),
            "--ollama-sha256", digest]
    refused = run(*args)
    assert refused.exit_code == 2
    assert "--allow-unofficial-artifacts" in refused.output
    allowed = run(*args, "--allow-unofficial-artifacts")
    assert allowed.exit_code == 0, allowed.output


def test_local_archive_must_match_the_pin(served_double: tuple[str, Path], tmp_path: Path) -> None:
    _, archive = served_double
    result = run("fetch", "--profile", "cpu", "--cache-dir", str(tmp_path), "--ollama-archive", str(archive))
    assert result.exit_code == 1
    assert "sha256 mismatch" in result.output
    assert not list((tmp_path / "artifacts").glob("[0-9a-f]*"))


def test_env_var_supplies_the_archive(served_double: tuple[str, Path], tmp_path: Path) -> None:
    _, archive = served_double
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    result = CliRunner().invoke(build.cli, ["fetch", "--profile", "test", "--cache-dir", str(tmp_path)],
                                env={"NEURALDRIVE_OLLAMA_ARCHIVE": str(archive)})
    assert result.exit_code == 0, result.output
    assert digest in result.output


def test_tree_renders_without_root(served_double: tuple[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    url, _ = served_double
    result = run("tree", "--profile", "test", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
                 "--artifact-mirror", url)
    assert result.exit_code == 0, result.output
    tree = Path(result.output.strip().splitlines()[-1])
    assert (tree / "auto/config").is_file()
    assert (tree / "config/neuraldrive-artifacts/ollama-linux-amd64.tar.zst").is_file()


def test_iso_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = run("iso", "--profile", "test", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "needs root" in result.output
    assert not (tmp_path / "out").exists()


def test_old_live_build_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builder.image.builddir.live_build_version", lambda: "1:20230502")
    result = run("iso", "--profile", "test", "--cache-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "live-build 1:20230502 is too old" in result.output


def test_authorized_keys_needs_ssh_enabled(tmp_path: Path) -> None:
    key = tmp_path / "k.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f x\n")
    result = run("tree", "--profile", "cpu", "--no-artifacts", "--out", str(tmp_path), "--authorized-keys", str(key))
    assert result.exit_code == 2 and "SSH is off" in result.output


def test_lock_from_sums_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "artifacts.lock.yaml"
    monkeypatch.setattr("builder.artifacts.lock.LOCK_FILE", lock)
    result = run("lock", "0.32.7", "--sums", str(SUMS))
    assert result.exit_code == 0, result.output
    assert "ollama-linux-amd64-rocm.tar.zst" in result.output
    assert "v0.32.7" in lock.read_text()


def test_lock_offline_needs_a_file() -> None:
    result = run("lock", "0.32.7", "--offline")
    assert result.exit_code == 2 and "--offline" in result.output


def test_test_profile_pin_matches_the_double(served_double: tuple[str, Path]) -> None:
    _, archive = served_double
    pin = load_profile("test").ollama.archive
    assert pin is not None
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == pin.sha256, (
        "builder/proof/ollama_double changed: update ollama.archive.sha256 in config/profiles/test.yaml "
        "to the output of `python3 -m builder.proof.ollama_double.package /tmp/d`"
    )
