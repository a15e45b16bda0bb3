"""Artifact fetching against a real HTTP server on 127.0.0.1: verify, retry, resume, time out, cache."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.artifacts.fetch import FetchPolicy, cache_path, fetch_artifact
from builder.artifacts.lock import Artifact
from builder.errors import ArtifactError

BODY = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(BODY).hexdigest()
FAST = FetchPolicy(retries=3, backoff=0.01, connect_timeout=2, stall_timeout=1.0)


@dataclass
class Behaviour:
    """What the server does, request by request."""

    plan: list[str] = field(default_factory=list)  # per request: ok, 404, 500, truncate, stall, norange
    requests: list[dict[str, str]] = field(default_factory=list)

    def next(self) -> str:
        return self.plan.pop(0) if self.plan else "ok"


class Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        b = self.server.behaviour  # type: ignore[attr-defined]
        b.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
        action = b.next()
        if action in ("404", "500"):
            self.send_error(int(action))
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and action != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(BODY) - start))
        self.end_headers()
        payload = BODY[start:]
        if action == "truncate":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if action == "stall":
            self.wfile.write(payload[:100_000])
            self.wfile.flush()
            time.sleep(3)
            return
        if action == "wrong":
            payload = b"x" * len(payload)
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.behaviour = behaviour  # type: ignore[attr-defined]
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    httpd.shutdown()
    httpd.server_close()


def artifact(source: str, sha: str = SHA) -> Artifact:
    return Artifact(name="ollama-linux-amd64.tar.zst", version="0.0.1", url=source, sha256=sha, source=source)


def test_happy_path_stores_verified_file_by_sha(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, _ = server
    path = fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST)
    assert path == cache_path(tmp_path, SHA)
    assert path.read_bytes() == BODY
    assert not list((tmp_path / "artifacts" / "partial").iterdir())


def test_checksum_mismatch_shows_both_hashes_and_leaves_nothing(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.plan = ["wrong"]
    with pytest.raises(ArtifactError) as err:
        fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST)
    assert SHA in str(err.value)
    assert hashlib.sha256(b"x" * len(BODY)).hexdigest() in str(err.value)
    assert [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()] == []


def test_truncated_body_is_resumed_with_range(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.plan = ["truncate", "ok"]
    path = fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST)
    assert path.read_bytes() == BODY
    assert behaviour.requests[0]["range"] == ""
    assert behaviour.requests[1]["range"] == f"bytes={len(BODY) // 2}-"


def test_partial_file_from_an_earlier_run_is_resumed(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    partial = tmp_path / "artifacts" / "partial" / f"{SHA}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(BODY[:300_000])
    assert fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST).read_bytes() == BODY
    assert behaviour.requests == [{"path": "/a.tar.zst", "range": "bytes=300000-"}]


def test_server_ignoring_range_restarts_cleanly(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    partial = tmp_path / "artifacts" / "partial" / f"{SHA}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"garbage")
    behaviour.plan = ["norange"]
    assert fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST).read_bytes() == BODY


def test_404_fails_at_once(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.plan = ["404"]
    with pytest.raises(ArtifactError, match="HTTP 404"):
        fetch_artifact(artifact(f"{url}/missing.tar.zst"), tmp_path, FAST)
    assert len(behaviour.requests) == 1
    assert not cache_path(tmp_path, SHA).exists()


def test_500_then_success_is_retried(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.plan = ["500", "500", "ok"]
    assert fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST).read_bytes() == BODY
    assert len(behaviour.requests) == 3


def test_persistent_500_gives_up(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.plan = ["500"] * 10
    with pytest.raises(ArtifactError, match="giving up after 4 attempts"):
        fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST)


def test_stalled_server_times_out_then_resumes(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.plan = ["stall", "ok"]
    started = time.monotonic()
    assert fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST).read_bytes() == BODY
    assert time.monotonic() - started < 10
    # Resumes from what had arrived (whole network reads), not from zero.
    start = int(behaviour.requests[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 100_000


def test_stalled_server_every_time_fails_clearly(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    behaviour.plan = ["stall"] * 3
    policy = FetchPolicy(retries=1, backoff=0.01, connect_timeout=2, stall_timeout=0.5)
    with pytest.raises(ArtifactError, match="stalled"):
        fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, policy)


def test_cache_hit_does_no_network_io(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = server
    fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST)
    count = len(behaviour.requests)
    # Even offline and with an unreachable source, the cached file is returned.
    again = fetch_artifact(artifact("http://127.0.0.1:9/unreachable"), tmp_path, FetchPolicy(offline=True))
    assert again.read_bytes() == BODY
    assert len(behaviour.requests) == count


def test_offline_with_empty_cache_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="--offline"):
        fetch_artifact(artifact("http://127.0.0.1:9/a.tar.zst"), tmp_path, FetchPolicy(offline=True))


def test_local_file_source_is_verified_and_cached(tmp_path: Path) -> None:
    local = tmp_path / "ollama-linux-amd64.tar.zst"
    local.write_bytes(BODY)
    path = fetch_artifact(artifact(str(local)), tmp_path / "cache", FetchPolicy(offline=True))
    assert path.read_bytes() == BODY
    with pytest.raises(ArtifactError, match="mismatch"):
        fetch_artifact(artifact(str(local), sha="0" * 64), tmp_path / "cache", FAST)
    assert not cache_path(tmp_path / "cache", "0" * 64).exists()


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        fetch_artifact(artifact(str(tmp_path / "nope.tar.zst")), tmp_path, FAST)


@pytest.mark.parametrize("damage", [b"", BODY[:-1], b"y" + BODY[1:]], ids=["empty", "truncated", "flipped"])
def test_a_damaged_cache_entry_is_evicted_and_fetched_again(server: tuple[str, Behaviour], tmp_path: Path,
                                                            damage: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    url, behaviour = server
    cached = cache_path(tmp_path, SHA)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(damage)  # empty, truncated, one byte flipped
    path = fetch_artifact(artifact(f"{url}/a.tar.zst"), tmp_path, FAST)
    assert path.read_bytes() == BODY and len(behaviour.requests) == 1
    assert "is damaged" in capsys.readouterr().err


def test_a_damaged_cache_entry_offline_is_refused_clearly(tmp_path: Path) -> None:
    cached = cache_path(tmp_path, SHA)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    with pytest.raises(ArtifactError, match="--offline"):
        fetch_artifact(artifact("http://127.0.0.1:9/a.tar.zst"), tmp_path, FetchPolicy(offline=True))
    assert not cached.exists()  # evicted, not trusted next time either


def test_a_second_build_on_one_cache_waits_for_the_first(tmp_path: Path) -> None:
    """Two processes take the cache's build lock: the second says so and waits; neither fails."""
    script = ("import sys, time; sys.path.insert(0, sys.argv[3]); from pathlib import Path; "
              "from builder.files import exclusive_lock\n"
              "with exclusive_lock(Path(sys.argv[1]), 'waiting for another build'):\n"
              "    print('got', sys.argv[2], time.monotonic(), flush=True); time.sleep(float(sys.argv[2]))\n")
    lock = tmp_path / "build.lock"
    root = str(Path(__file__).resolve().parents[2])
    import subprocess
    import sys

    first = subprocess.Popen([sys.executable, "-c", script, str(lock), "1.5", root], stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    started = first.stdout.readline().split()
    second = subprocess.run([sys.executable, "-c", script, str(lock), "0", root], capture_output=True, text=True,
                            timeout=30, check=True)
    first.wait(timeout=30)
    lines = second.stdout.splitlines()
    assert lines[0].startswith("waiting for another build (held by pid ")
    assert float(lines[1].split()[2]) >= float(started[2]) + 1.4  # only after the first let go
