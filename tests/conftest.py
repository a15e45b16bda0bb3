"""Shared pytest fixtures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make `tests.fixtures...` importable however pytest was started.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from builder.proof.ollama_double import SCRIPT, write_model  # noqa: E402
from tests.fixtures.trees import double_archive, trees, verify_roots  # noqa: E402,F401 (fixtures)

_START_TIMEOUT_S = 10.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OllamaDouble:
    """A running `ollama serve` test double (see builder/proof/ollama_double)."""

    def __init__(self, port: int, models_dir: Path) -> None:
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self.models_dir = models_dir

    def add_model(self, name: str, size: int = 1234) -> None:
        """Put model `name` ('x' or 'x:tag') of `size` bytes in the store."""
        write_model(self.models_dir, name, size)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    """True once GET / answers; False if the server died (e.g. port taken)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with _NO_PROXY.open(url + "/", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"ollama test double not ready after {_START_TIMEOUT_S}s:\n{log.read_text()}")


@pytest.fixture
def ollama_double(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OllamaDouble]:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    log = tmp_path / "ollama-double.log"
    for _attempt in range(3):  # the free port can be grabbed before we bind it
        double = OllamaDouble(_free_port(), models_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        # serve writes $HOME/.ollama/id_ed25519 at start-up, as `ollama serve` does
        env.update(OLLAMA_HOST=double.host, OLLAMA_MODELS=str(models_dir),
                   OLLAMA_TESTDOUBLE_UNLOAD_DELAY="0.5", HOME=str(tmp_path / "home"))
        marker = request.node.get_closest_marker("double_env")
        env.update(marker.kwargs if marker else {})
        with open(log, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, str(SCRIPT), "serve"], env=env,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        if _wait_ready(proc, double.url, log):
            break
    else:
        pytest.fail(f"ollama test double failed to start:\n{log.read_text()}")
    try:
        yield double
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
