"""Image tests: testinfra against a VM booted by `python build.py test` (run them through it).

The harness passes the VM's coordinates in the environment; the `host` fixture is testinfra's,
connected over SSH with the harness's ssh_config (ControlMaster keeps it fast).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.image.helpers import Gateway, create_model, push_models

REQUIRED = ("NEURALDRIVE_GATEWAY_PORT", "NEURALDRIVE_ENGINE_FORWARD_PORT", "NEURALDRIVE_ISO",
            "NEURALDRIVE_TEST_ARCHIVE", "NEURALDRIVE_STATE", "NEURALDRIVE_PROFILE")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "after_reboot: runs on the second boot (persistence checks)")
    missing = [name for name in REQUIRED if name not in os.environ]
    if missing:
        raise pytest.UsageError(f"tests/image run through `python build.py test` (missing {', '.join(missing)})")


@pytest.fixture(scope="session")
def profile_name() -> str:
    return os.environ["NEURALDRIVE_PROFILE"]


@pytest.fixture(scope="module")
def api_key(host: Any) -> str:
    with host.sudo():
        return str(host.check_output("cat /var/lib/neuraldrive/secrets/api-key")).strip()


@pytest.fixture(scope="module")
def admin_key(host: Any) -> str:
    with host.sudo():
        return str(host.check_output("cat /var/lib/neuraldrive/secrets/admin-key")).strip()


@pytest.fixture(scope="module")
def gateway(host: Any) -> Gateway:
    ca = host.file("/var/lib/neuraldrive/tls/ca.crt").content_string
    return Gateway(int(os.environ["NEURALDRIVE_GATEWAY_PORT"]), ca)


@pytest.fixture(scope="session")
def state() -> dict[str, Any]:
    path = Path(os.environ["NEURALDRIVE_STATE"])
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model the engine can load, made the same way for the real engine and the double: a tiny real
    GGUF (tests/fixtures/tiny_gguf.py) imported with `ollama create` on the guest. NEURALDRIVE_TEST_MODELS
    (+ NEURALDRIVE_TEST_MODEL_NAME) pushes an Ollama models dir of your own instead."""
    supplied = os.environ.get("NEURALDRIVE_TEST_MODELS")
    if supplied:
        push_models(Path(supplied))
        return os.environ.get("NEURALDRIVE_TEST_MODEL_NAME", "tinyllama:latest")
    from tests.fixtures.tiny_gguf import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "nd-tiny.gguf")
    create_model(gguf, "nd-tiny:latest")
    return "nd-tiny:latest"
