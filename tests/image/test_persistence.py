"""Persistence: state written on the first boot is there, unchanged, on the second."""

from __future__ import annotations

from typing import Any

import pytest

from tests.image.helpers import save_state

BLOB = "/var/lib/neuraldrive/models/blobs/sha256-persistence-marker"
ENGINE_KEY = "/var/lib/neuraldrive/engine/.ollama/id_ed25519.pub"


def test_state_lives_on_the_persistence_partition(host: Any) -> None:
    source = host.check_output("findmnt -n -o SOURCE -T /var/lib/neuraldrive")
    label = host.check_output(f"lsblk -n -o LABEL {source.split('[')[0]}")
    assert label.strip() == "persistence", source


def test_write_markers(host: Any, api_key: str) -> None:
    with host.sudo():
        host.check_output(f"install -d -o neuraldrive-ollama -g neuraldrive-ollama {BLOB.rsplit('/', 1)[0]}")
        host.check_output(f"head -c 65536 /dev/urandom > {BLOB} && chown neuraldrive-ollama: {BLOB}")
        digest = host.check_output(f"sha256sum {BLOB}").split()[0]
        override = host.check_output("cat /var/lib/neuraldrive/config/ollama.conf")
        engine_key = host.check_output(f"cat {ENGINE_KEY}")
        host.check_output("sync")
    save_state({"blob_sha256": digest, "api_key": api_key, "override_file": override,
                "engine_key": engine_key})


@pytest.mark.after_reboot
def test_markers_survive_a_reboot(host: Any, api_key: str, state: dict[str, Any]) -> None:
    assert "blob_sha256" in state, "the first boot's tests did not run"
    with host.sudo():
        assert host.check_output(f"sha256sum {BLOB}").split()[0] == state["blob_sha256"]
        assert host.check_output("cat /var/lib/neuraldrive/config/ollama.conf") == state["override_file"]
        # The engine made its keypair once, on the first boot; it did not make another.
        assert host.check_output(f"cat {ENGINE_KEY}") == state["engine_key"]
    assert api_key == state["api_key"]


@pytest.mark.after_reboot
def test_override_still_effective_after_reboot(host: Any, state: dict[str, Any]) -> None:
    pid = host.check_output("systemctl show -p MainPID --value neuraldrive-ollama.service")
    with host.sudo():
        env = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert state["override"] in env.splitlines()


@pytest.mark.after_reboot
def test_no_failed_units_after_reboot(host: Any) -> None:
    assert host.check_output("systemctl --failed --no-legend --plain").strip() == ""
