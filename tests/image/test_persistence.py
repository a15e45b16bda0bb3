"""Persistence: state written on the first boot is there, unchanged, on the second."""

from __future__ import annotations

from typing import Any

import pytest

from tests.image.helpers import save_state

MANIFESTS = "/var/lib/neuraldrive/models/manifests"
ENGINE_KEY = "/var/lib/neuraldrive/engine/.ollama/id_ed25519.pub"


def test_state_lives_on_the_persistence_partition(host: Any) -> None:
    source = host.check_output("findmnt -n -o SOURCE -T /var/lib/neuraldrive")
    label = host.check_output(f"lsblk -n -o LABEL {source.split('[')[0]}")
    assert label.strip() == "persistence", source


def test_write_markers(host: Any, api_key: str, model: str) -> None:
    """The model the suite made with `ollama create` (manifest + blobs: what the engine keeps; a stray
    blob of our own would be pruned by the real engine), the override and the keys."""
    with host.sudo():
        models = host.check_output(f"cd {MANIFESTS}/.. && find manifests blobs -type f | sort | xargs sha256sum")
        override = host.check_output("cat /var/lib/neuraldrive/config/ollama.conf")
        engine_key = host.check_output(f"cat {ENGINE_KEY}")
        host.check_output("sync")
    assert model.split(":", maxsplit=1)[0] in models
    save_state({"models_sha256": models, "api_key": api_key, "override_file": override,
                "engine_key": engine_key})


@pytest.mark.after_reboot
def test_markers_survive_a_reboot(host: Any, api_key: str, state: dict[str, Any]) -> None:
    assert "models_sha256" in state, "the first boot's tests did not run"
    with host.sudo():
        models = host.check_output(f"cd {MANIFESTS}/.. && find manifests blobs -type f | sort | xargs sha256sum")
        assert models == state["models_sha256"]
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
