"""The engine: the pinned binary, run as the seed's hardened service, loopback only, self-healing."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shlex
import ssl
import tarfile
import time
from typing import Any

import pytest

from tests.image.helpers import save_state, wait_until_engine_answers

UNIT = "neuraldrive-ollama.service"


def pinned_binary_sha256() -> str:
    import subprocess

    archive = os.environ["NEURALDRIVE_TEST_ARCHIVE"]
    data = subprocess.run(["zstd", "-dc", archive], capture_output=True, check=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "bin/ollama")
        handle = tar.extractfile(member)
        assert handle is not None
        return hashlib.sha256(handle.read()).hexdigest()


def main_pid(host: Any) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value {UNIT}"))


def test_binary_is_the_pinned_archive_content(host: Any) -> None:
    with host.sudo():
        guest = host.check_output("sha256sum /usr/local/bin/ollama").split()[0]
    assert guest == pinned_binary_sha256()
    assert host.file("/usr/local/lib/ollama").is_directory


def test_engine_runs_as_its_own_user(host: Any) -> None:
    assert host.service(UNIT).is_running
    assert host.service(UNIT).is_enabled
    uid = host.check_output(f"ps -o uid= -p {main_pid(host)}").strip()
    assert uid == "901"
    assert host.user("neuraldrive-ollama").uid == 901


HOME = "/var/lib/neuraldrive/engine"


def test_engine_home_holds_its_keypair_and_nothing_else_is_writable(host: Any) -> None:
    """`ollama serve` makes ~/.ollama/id_ed25519 before it listens (cmd/cmd.go initializeKeypair)."""
    with host.sudo():
        home = host.file(HOME)
        assert (home.user, home.group, home.mode) == ("neuraldrive-ollama", "neuraldrive-ollama", 0o700)
        key = host.file(f"{HOME}/.ollama/id_ed25519")
        assert key.is_file and key.user == "neuraldrive-ollama" and key.mode == 0o600
        assert host.file(f"{HOME}/.ollama/id_ed25519.pub").content_string.startswith("ssh-ed25519 ")
        # Only its home and the model store are the engine's; the state dir and the rest are not.
        writable = host.run("sudo -u neuraldrive-ollama find /var/lib/neuraldrive -maxdepth 1 -writable")
    # (instances/ holds the engine instances' model stores, when the profile has instances)
    assert sorted(set(writable.stdout.split()) - {"/var/lib/neuraldrive/instances"}) == [
        HOME, "/var/lib/neuraldrive/logs", "/var/lib/neuraldrive/models"]


def test_engine_without_a_writable_home_fails_visibly(host: Any) -> None:
    """The regression the double hid: with no writable home the real engine exits before listening.
    The suite must see that (a double that serves anyway would make this test fail)."""
    try:
        with host.sudo():
            host.check_output(f"systemctl stop {UNIT} && mv {HOME} {HOME}.saved && "
                              f"install -d -m 0755 -o root -g root {HOME}")
            host.run(f"systemctl start {UNIT}")
            # The engine exits before it listens (status 1); systemd then schedules a restart.
            deadline = time.monotonic() + 90
            while host.check_output(f"systemctl show -p ExecMainStatus --value {UNIT}").strip() == "0":
                assert time.monotonic() < deadline, "the engine neither failed nor served"
                assert host.run("curl -sf http://127.0.0.1:11434/api/version").rc != 0, "engine serves without its key"
                time.sleep(1)
            status = host.check_output(f"systemctl show -p ExecMainStatus --value {UNIT}").strip()
            log = host.check_output(f"journalctl -u {UNIT} -n 20 --no-pager -o cat")
        assert status == "1", log
        assert ".ollama" in log and "permission denied" in log.lower(), log
    finally:
        with host.sudo():
            host.check_output(f"systemctl stop {UNIT}; rm -rf {HOME} && mv {HOME}.saved {HOME} && "
                              f"systemctl reset-failed {UNIT}; systemctl start {UNIT}")
        wait_until_engine_answers(host, timeout=120)


def test_engine_listens_on_loopback_only(host: Any) -> None:
    listeners = host.check_output("ss -H -ltn").splitlines()
    on_port = [line.split()[3] for line in listeners if line.split()[3].endswith(":11434")]
    assert on_port == ["127.0.0.1:11434"], listeners


def test_unit_properties_as_the_seed_says(host: Any) -> None:
    lines = host.check_output(
        f"systemctl show {UNIT} -p PrivateDevices -p MemoryHigh -p MemoryMax -p EnvironmentFiles "
        "-p Requires -p After -p User -p KillMode -p LimitMEMLOCK -p DeviceAllow -p DevicePolicy").splitlines()
    props = dict(line.split("=", 1) for line in lines)
    # One EnvironmentFiles= line per file, in the unit's order.
    env_files = [line.split("=", 1)[1] for line in lines if line.startswith("EnvironmentFiles=")]
    assert props["PrivateDevices"] == "no"
    assert props.get("DeviceAllow", "") == "" and props["DevicePolicy"] == "auto"
    assert "neuraldrive-gpu-detect.service" in props["Requires"].split()
    assert "neuraldrive-gpu-detect.service" in props["After"].split()
    assert props["User"] == "neuraldrive-ollama"
    assert props["KillMode"] == "mixed"
    assert props["LimitMEMLOCK"] == "infinity"
    assert env_files[:2] == ["/etc/neuraldrive/ollama.conf (ignore_errors=no)",
                             "/var/lib/neuraldrive/config/ollama.conf (ignore_errors=yes)"]
    total = int(host.check_output("awk '/MemTotal/ {print $2 * 1024}' /proc/meminfo"))
    assert abs(int(props["MemoryHigh"]) - 0.90 * total) < 0.01 * total
    assert abs(int(props["MemoryMax"]) - 0.95 * total) < 0.01 * total


def test_engine_defaults_reach_the_process(host: Any) -> None:
    with host.sudo():
        env = host.check_output(f"tr '\\0' '\\n' < /proc/{main_pid(host)}/environ")
    for line in ("OLLAMA_HOST=127.0.0.1:11434", "OLLAMA_MODELS=/var/lib/neuraldrive/models/",
                 "OLLAMA_MAX_LOADED_MODELS=0", "OLLAMA_NUM_PARALLEL=1"):
        assert line in env.splitlines()


@pytest.mark.parametrize("unit", ["neuraldrive-ollama.service", "neuraldrive-caddy.service",
                                  "neuraldrive-firstboot.service", "neuraldrive-gpu-detect.service",
                                  "neuraldrive-gpu-idle.service", "neuraldrive-issue.service",
                                  "neuraldrive-status.service"])
def test_exposure_on_the_guest(host: Any, unit: str) -> None:
    with host.sudo():
        out = host.run(f"systemd-analyze security --no-pager {unit}").stdout
    score = float(out.rsplit("Overall exposure level for", 1)[1].split(":", 1)[1].split()[0])
    assert score <= (2.0 if unit.startswith("neuraldrive-ollama") else 1.5), out[-2000:]


def test_killed_engine_comes_back_within_15s(host: Any) -> None:
    before = main_pid(host)
    with host.sudo():
        host.check_output(f"kill -9 {before}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pid = main_pid(host)
        if pid not in (0, before) and host.service(UNIT).is_running:
            break
        time.sleep(1)
    else:
        pytest.fail("engine not active again 15 s after kill -9")
    wait_until_engine_answers(host)


def test_engine_killed_mid_stream_fails_the_request_and_comes_back(host: Any, gateway: Any, api_key: str,
                                                                   model: str) -> None:
    """kill -9 while a reply streams through the gateway: the client sees the stream break (never a
    final "done"), and the engine (with its runner children: KillMode=mixed) is back within 15 s."""
    override = "/var/lib/neuraldrive/config/ollama.conf"
    with host.sudo():
        saved = host.run(f"cat {override}").stdout if host.file(override).exists else None
        # The double paces its stream (a real engine is still generating 100000 tokens anyway).
        host.check_output(f"echo OLLAMA_TESTDOUBLE_STREAM_DELAY_MS=2000 >> {override}; "
                          f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")
    try:
        wait_until_engine_answers(host, timeout=60)
        context = ssl.create_default_context(cadata=host.file("/var/lib/neuraldrive/tls/ca.crt").content_string)
        context.check_hostname = False
        connection = http.client.HTTPSConnection("127.0.0.1", int(os.environ["NEURALDRIVE_GATEWAY_PORT"]),
                                                 context=context, timeout=60)
        body = json.dumps({"model": model, "prompt": "count", "options": {"num_predict": 100000}})
        connection.request("POST", "/api/generate", body, {"Authorization": f"Bearer {api_key}",
                                                           "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        lines = [response.readline()]  # the first token: the reply is streaming
        before = main_pid(host)
        with host.sudo():
            host.check_output(f"kill -9 {before}")
        killed = time.monotonic()
        try:
            while line := response.readline():
                lines.append(line)
        except (http.client.HTTPException, OSError):
            pass  # the stream broke: what a client must see
        connection.close()
        assert not any(b'"done":true' in line.replace(b" ", b"") for line in lines), lines[-3:]
        while main_pid(host) in (0, before) or not host.service(UNIT).is_running:
            assert time.monotonic() - killed < 15, "engine not back 15 s after kill -9"
            time.sleep(1)
    finally:
        with host.sudo():
            host.check_output(f"printf %s {shlex.quote(saved)} > {override}" if saved is not None
                              else f"rm -f {override}")
            host.check_output(f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")
        wait_until_engine_answers(host, timeout=60)


def test_persistent_override_changes_a_setting(host: Any) -> None:
    override = "/var/lib/neuraldrive/config/ollama.conf"
    with host.sudo():
        host.check_output(f"printf 'OLLAMA_KEEP_ALIVE=7m\\n' > {override}")
        host.check_output(f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")
        env = host.check_output(f"tr '\\0' '\\n' < /proc/{main_pid(host)}/environ")
    assert "OLLAMA_KEEP_ALIVE=7m" in env.splitlines()
    wait_until_engine_answers(host)
    save_state({"override": "OLLAMA_KEEP_ALIVE=7m"})
