"""The upgrade proof (issue 14): a stick written from release A and used (a model, a marker, the
device's keys), upgraded in place to release B (`usb --upgrade --image`), booted again: everything the
user changed is as it was, B runs, and the persistence partition's bytes never changed (hashed here,
on the host, apart from the tool's own check).

Release B is the test profile with another image.version and SSH off in the profile, as a release
image has it: its sshd runs only because the stick carries a second key (`usb --authorized-keys`), so
every check of B's boot also proves SSH keys at write time.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from builder import facts
from builder.image.publish import output_names
from builder.profile import Profile
from builder.profile.load import with_image_version
from builder.proof.ollama_double import write_model
from builder.proof.summary import Summary
from builder.usb.layout import esp_extent
from builder.usb.upgrade import UpgradeReport, upgrade_image
from builder.vm.guest import HOST_ALIAS, SshAccess, close_master, ssh, write_ssh_config

RELEASE_B_SUFFIX = "+upgrade"
MARKER = f"{facts.OVERRIDE_DIR}/stick-marker"
MODEL = "nd-upgrade:latest"
MODEL_NAME = "nd-upgrade"
# Everything the user (or the device for them) made, by sha256: keys, CA, host keys, the engine's
# keypair, the stick's SSH keys, the marker, and every file of the model store.
KEPT = (facts.API_KEY_FILE, facts.ADMIN_KEY_FILE, f"{facts.TLS_DIR}/ca.key", f"{facts.TLS_DIR}/ca.crt",
        f"{facts.SSH_HOST_KEY_DIR}/ssh_host_ed25519_key", f"{facts.SSH_HOST_KEY_DIR}/ssh_host_ed25519_key.pub",
        f"{facts.ENGINE_HOME}/.ollama/id_ed25519", f"{facts.AUTHORIZED_KEYS_DIR}/{facts.ADMIN_USER}", MARKER)
STATE = "sudo sh -c " + shlex.quote(
    f"sha256sum {' '.join(KEPT)}; find {facts.MODELS_DIR} -type f -exec sha256sum {{}} +; "
    f"openssl x509 -noout -fingerprint -sha256 -in {facts.TLS_DIR}/ca.crt")
VERSION = ". /usr/lib/os-release && echo \"$IMAGE_ID $IMAGE_VERSION\""


def release_b(profile: Profile) -> Profile:
    b = with_image_version(profile, f"{profile.image.version}{RELEASE_B_SUFFIX}")
    return replace(b, ssh=replace(b.ssh, enabled=False, authorized_keys=None))


def release_b_iso(iso_a: Path, profile: Profile) -> Path:
    """Where `build.py test` put release B: beside A, under B's own name."""
    return output_names(release_b(profile), iso_a.parent).iso


def device_state(access: SshAccess) -> str:
    return ssh(access, STATE, timeout=120).stdout


def use_the_device(access: SshAccess, label: str, summary: Summary) -> str:
    """On release A: a model in the store (as a pull leaves it), a marker; returns the device's state."""
    with tempfile.TemporaryDirectory(prefix="neuraldrive-model-") as store:
        write_model(Path(store), MODEL)
        tar = subprocess.run(["tar", "-C", store, "-cf", "-", "manifests", "blobs"], capture_output=True,
                             check=True).stdout
    made = subprocess.run(["ssh", "-F", str(access.config), HOST_ALIAS,
                           f"sudo tar -xf - -C {facts.MODELS_DIR} --no-same-owner && sudo chown -R "
                           f"{facts.OLLAMA_USER}:{facts.OLLAMA_USER} {facts.MODELS_DIR} && ollama list"],
                          input=tar, capture_output=True, timeout=300, check=False)
    marker = f"written on release A at {time.time():.0f}"
    wrote = ssh(access, f"echo '{marker}' | sudo tee {MARKER} >/dev/null && sync && sudo cat {MARKER}")
    if made.returncode != 0 or MODEL_NAME not in made.stdout.decode() or wrote.stdout.strip() != marker:
        summary.errors.append(f"{label}: could not use the device: model {made.returncode} "
                              f"{made.stderr.decode(errors='replace')[-200:]!r}, marker {wrote.stderr.strip()!r}")
    state = device_state(access)
    missing = [path for path in KEPT if f"  {path}\n" not in state]
    if missing or "/manifests/" not in state or "Fingerprint=" not in state:
        summary.errors.append(f"{label}: the device's state is incomplete (missing {missing}): {state[-400:]!r}")
    ssh(access, "sync")
    return state


def partition_3_sha256(image: Path) -> str:
    """The persistence partition's sha256, found through sfdisk (not the upgrade tool's own reading)."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    third = next(p for p in table["partitions"] if p["node"].endswith("3"))
    digest = hashlib.sha256()
    with image.open("rb") as handle:
        handle.seek(int(third["start"]) * 512)
        remaining = int(third["size"]) * 512
        while remaining:
            block = handle.read(min(4 << 20, remaining))
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def upgrade(iso_b: Path, image: Path, label: str, summary: Summary) -> UpgradeReport | None:
    """`usb --upgrade --image` to release B, the persistence partition hashed before and after."""
    before = partition_3_sha256(image)
    started = time.monotonic()
    report = upgrade_image(iso_b, image, esp_extent(iso_b), verify_persistence=True)
    summary.figures[f"{label} upgrade"] = (
        f"{report.written_bytes >> 20} MiB in {time.monotonic() - started:.1f} s (write {report.write_seconds:.1f} s, "
        f"verify {report.verify_seconds:.1f} s, persistence {report.persistence.size >> 20} MiB read twice)")
    after = partition_3_sha256(image)
    if before != after or report.persistence_after != before:
        summary.errors.append(f"{label}: the persistence partition changed in the upgrade: {before} before, "
                              f"{after} after (the tool saw {report.persistence_after})")
        return None
    summary.passed += 1
    return report


def check_release_b(access: SshAccess, old_key: Path, workdir: Path, port: int, state_a: str, profile_b: Profile,
                    label: str, summary: Summary) -> None:
    """Booted B, reached with the stick's key only: the state as A left it, and B's version."""
    state_b = device_state(access)
    if state_b != state_a:
        summary.errors.append(f"{label}: the device's state changed across the upgrade:\n  A {state_a!r}\n  "
                              f"B {state_b!r}")
    else:
        summary.passed += 1
    expected = f"neuraldrive {profile_b.image.version}"
    seen = ssh(access, VERSION).stdout.strip()
    status = ssh(access, "sudo neuraldrive status --json").stdout
    version = json.loads(status).get("version") if status.strip().startswith("{") else None
    if seen != expected or version != profile_b.image.version:
        summary.errors.append(f"{label}: os-release says {seen!r}, status {version!r}; expected {expected!r}")
    else:
        summary.passed += 1
    # The image's own (run) key is not in B: only the stick's key opens it.
    (workdir / "baked-key").mkdir(exist_ok=True)
    baked = write_ssh_config(workdir / "baked-key", old_key, port)
    try:
        tried = ssh(baked, "true", timeout=30)
    finally:
        close_master(baked)
    if tried.returncode == 0 or "Permission denied" not in tried.stderr:  # refused by sshd, not unreachable
        summary.errors.append(f"{label}: release B's sshd did not refuse the image-test key it was not built "
                              f"with (exit {tried.returncode}: {tried.stderr.strip()[-200:]!r})")
    else:
        summary.passed += 1
    # sshd stopped, then the keys file replaced the way the console writes it (a rename into place):
    # neuraldrive-ssh-keys.path must start sshd again (our session survives: KillMode=process).
    keys = f"{facts.AUTHORIZED_KEYS_DIR}/{facts.ADMIN_USER}"
    restarted = ssh(access, "sudo sh -c " + shlex.quote(
        f"systemctl stop ssh.service && cp -p {keys} {keys}.new && mv -f {keys}.new {keys} && "
        "for i in $(seq 30); do systemctl is-active -q ssh.service && echo started && exit 0; sleep 1; done; "
        "echo not started"), timeout=90).stdout.strip()
    if restarted != "started":
        summary.errors.append(f"{label}: sshd did not come back when the keys file was rewritten ({restarted!r})")
    else:
        summary.passed += 1
