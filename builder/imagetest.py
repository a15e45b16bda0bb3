"""`build.py test`: build (or take) a test ISO, boot it in QEMU, run tests/image with testinfra.

Run plan: the full suite on one boot with a persistence disk attached, a clean poweroff, a second
boot on the same disk for the persistence checks, then a smoke boot (login prompt, SSH, no failed
units) for each other boot mode. Figures (boot-to-SSH, boot-to-gateway-ready) are printed and
written to test-summary.json; on failure the serial logs are kept under --out.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from .errors import VMError
from .guest import SshAccess, close_master, ssh, ssh_answers, write_ssh_config
from .profile import Profile
from .steps import complete_step, info
from .vm import VM, BootSpec, grub_entry_append, make_persistence_disk

ROOT = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 600.0


@dataclass
class BootFigures:
    mode: str
    accel: str = ""
    qemu: str = ""  # which QEMU ran it (version, host's or the tools root's): boot times depend on it
    login_prompt_s: float | None = None
    ssh_s: float | None = None
    system_running_s: float | None = None
    gateway_ready_s: float | None = None
    failed_units: list[str] = field(default_factory=list)
    # The guest's own account (systemd-analyze): where the boot went, for the bench to report.
    analysis: str = ""


@dataclass
class Summary:
    iso: str
    boots: list[BootFigures] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.errors and self.passed > 0


class _FileMapHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD /NAME for exactly the names in `files`; 404 for every other path."""

    files: ClassVar[dict[str, Path]] = {}

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        path = self.files.get(self.path)
        if path is None:
            self.send_error(404)
            return
        with path.open("rb") as stream:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(stream.fileno()).st_size))
            self.end_headers()
            if with_body:
                shutil.copyfileobj(stream, self.wfile)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_files(files: dict[str, Path]) -> Iterator[str]:
    """Serve exactly `files` (URL name -> file) on 127.0.0.1 (a random port) for the build's
    artifact fetch: never the directory they sit in (a temp dir, the user's downloads, …)."""
    for name in files:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"serve_files: {name!r} is not a plain file name")
    handler = type("FileMap", (_FileMapHandler,), {"files": {f"/{n}": Path(p) for n, p in files.items()}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_double_archive(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.ollama_double.package import build_archive

    return build_archive(directory)


def key_for_iso(iso: Path) -> Path:
    return iso.with_name(iso.name + ".ssh-key")


def gateway_ready(port: int, api_key: str) -> bool:
    """An authenticated /api/version through the gateway answers 200 (the device's own cert)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the device CA is checked by the image tests themselves
    request = urllib.request.Request(f"https://127.0.0.1:{port}/api/version",
                                     headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def boot_and_wait(vm: VM, access: SshAccess, figures: BootFigures, want_gateway: bool) -> str:
    """Wait for the login prompt, SSH, a settled system and (optionally) the gateway; returns the API key."""
    figures.accel, figures.qemu = vm.accel, vm.qemu.description
    figures.login_prompt_s = round(vm.wait_for_serial("login:", BOOT_TIMEOUT), 1)
    figures.ssh_s = round(vm.wait_until("SSH", lambda: ssh_answers(access), BOOT_TIMEOUT), 1)
    state = ssh(access, "systemctl is-system-running --wait", timeout=BOOT_TIMEOUT)
    figures.system_running_s = round(vm.elapsed(), 1)
    failed = ssh(access, "systemctl --failed --no-legend --plain | awk '{print $1}'")
    figures.failed_units = failed.stdout.split()
    if state.stdout.strip() != "running":
        info(f"  system state: {state.stdout.strip()} (failed units: {' '.join(figures.failed_units) or 'none'})")
    key = ssh(access, "sudo cat /var/lib/neuraldrive/secrets/api-key").stdout.strip()
    if want_gateway:
        if not key:
            raise VMError("the guest has no API key (neuraldrive-firstboot failed?)")
        figures.gateway_ready_s = round(
            vm.wait_until("gateway", lambda: gateway_ready(vm.forwards.gateway, key), BOOT_TIMEOUT), 1)
    return key


_SERIAL_KEY = re.compile(r"API key:\s+(nd-[A-Za-z0-9_-]{32,})")


def api_key_from_serial(vm: VM, timeout: float) -> str:
    """The key as the console greeting shows it (release images have no SSH to ask)."""
    deadline = vm.started + timeout
    while time.monotonic() < deadline:
        found = _SERIAL_KEY.findall(vm.serial_log.read_text(errors="replace"))
        if found:
            return str(found[-1])
        if not vm.alive():
            raise VMError(f"QEMU exited early; serial tail:\n{vm.serial_tail()}")
        time.sleep(1)
    raise VMError(f"no API key on the serial console within {timeout:.0f}s; tail:\n{vm.serial_tail()}")


ANALYZE = ("systemd-analyze; systemd-analyze critical-chain --no-pager; systemd-analyze blame --no-pager | head -20; "
           "sudo dmesg | grep -m1 'Not activating Mandatory Access Control'; sudo dmesg | grep -m1 'systemd\\[1\\]'")


def measure_boot(spec: BootSpec, key: Path | None, workdir: Path) -> BootFigures:
    """One boot, timed from QEMU start: login prompt, SSH (if the image has it), gateway ready."""
    figures = BootFigures(mode=f"{spec.firmware}-{spec.media}")
    vm = VM(spec, workdir)
    access = write_ssh_config(workdir, key, vm.forwards.ssh) if key is not None else None
    try:
        vm.start()
        figures.accel, figures.qemu = vm.accel, vm.qemu.description
        figures.login_prompt_s = round(vm.wait_for_serial("login:", BOOT_TIMEOUT), 1)
        if access is not None:
            figures.ssh_s = round(vm.wait_until("SSH", lambda: ssh_answers(access), BOOT_TIMEOUT), 1)
            api_key = ssh(access, "sudo cat /var/lib/neuraldrive/secrets/api-key").stdout.strip()
        else:
            api_key = api_key_from_serial(vm, BOOT_TIMEOUT)
        figures.gateway_ready_s = round(
            vm.wait_until("gateway", lambda: gateway_ready(vm.forwards.gateway, api_key), BOOT_TIMEOUT, 1.0), 1)
        if access is not None:
            figures.analysis = ssh(access, ANALYZE, timeout=120).stdout
    finally:
        if access is not None:
            close_master(access)
        vm.stop()
    return figures


def poweroff(vm: VM, access: SshAccess) -> None:
    ssh(access, "sudo systemctl poweroff", timeout=30)
    close_master(access)
    vm.stop(graceful_timeout=120)


def run_pytest(phase: str, access: SshAccess, vm: VM, env: dict[str, str], workdir: Path) -> tuple[int, int, int]:
    junit = workdir / f"junit-{phase}.xml"
    marker = "after_reboot" if phase == "after-reboot" else "not after_reboot"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests/image"), "-p", "no:cacheprovider", "-q",
           "-m", marker, f"--ssh-config={access.config}", f"--hosts=ssh://{access.target}",
           f"--junitxml={junit}", "--rootdir", str(ROOT), "-o", "testpaths=tests/image"]
    full_env = {**os.environ, **env, "NEURALDRIVE_GATEWAY_PORT": str(vm.forwards.gateway),
                "NEURALDRIVE_ENGINE_FORWARD_PORT": str(vm.forwards.engine),
                "NEURALDRIVE_SERIAL_LOG": str(vm.serial_log), "NEURALDRIVE_SSH_CONFIG": str(access.config)}
    subprocess.run(cmd, env=full_env, check=False, cwd=ROOT)
    if not junit.is_file():
        return 0, 1, 0
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests, failures, errors, skipped = (int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped"))
    return tests - failures - errors - skipped, failures + errors, skipped


def run_image_tests(
    profile: Profile,
    iso: Path,
    key: Path,
    archive: Path,
    modes: list[str],
    out_dir: Path,
    accel: str,
    stick: bool = True,
) -> Summary:
    summary = Summary(iso=str(iso))
    workdir = Path(tempfile.mkdtemp(prefix="neuraldrive-test-"))
    ok = False
    try:
        persistence = make_persistence_disk(workdir / "persistence.qcow2")
        state_file = workdir / "state.json"
        env = {"NEURALDRIVE_ISO": str(iso), "NEURALDRIVE_TEST_ARCHIVE": str(archive),
               "NEURALDRIVE_PROFILE": profile.name, "NEURALDRIVE_STATE": str(state_file),
               "NEURALDRIVE_SSH_KEY": str(key)}
        firmware, media = modes[0].split("-")
        spec = BootSpec(iso=iso, firmware=firmware, media=media, persistence_disk=persistence,
                        gateway_guest_port=profile.gateway.port, accel=accel)
        for phase in ("main", "after-reboot"):
            figures = BootFigures(mode=f"{modes[0]} ({phase})")
            summary.boots.append(figures)
            vm = VM(spec, workdir)
            access = write_ssh_config(workdir, key, vm.forwards.ssh)
            try:
                with complete_step(f"Booting {iso.name} ({modes[0]}, {phase})"):
                    vm.start()
                    boot_and_wait(vm, access, figures, want_gateway=True)
                info(f"  login prompt {figures.login_prompt_s}s, SSH {figures.ssh_s}s, "
                     f"gateway ready {figures.gateway_ready_s}s after QEMU start ({vm.accel})")
                with complete_step(f"Running tests/image ({phase})"):
                    passed, failed, skipped = run_pytest(phase, access, vm, env, workdir)
                summary.passed += passed
                summary.failed += failed
                summary.skipped += skipped
                poweroff(vm, access)
            finally:
                close_master(access)
                vm.stop()
        for mode in modes[1:]:
            figures = BootFigures(mode=f"{mode} (smoke)")
            summary.boots.append(figures)
            firmware, media = mode.split("-")
            vm = VM(BootSpec(iso=iso, firmware=firmware, media=media, gateway_guest_port=profile.gateway.port,
                             accel=accel), workdir)
            access = write_ssh_config(workdir, key, vm.forwards.ssh)
            try:
                with complete_step(f"Smoke boot {mode}"):
                    vm.start()
                    boot_and_wait(vm, access, figures, want_gateway=True)
                if figures.failed_units:
                    summary.errors.append(f"{mode}: failed units {figures.failed_units}")
            finally:
                close_master(access)
                vm.stop()
        if stick:
            run_stick_tests(profile, iso, key, workdir, summary)
        ok = summary.ok
    except VMError as exc:
        summary.errors.append(str(exc))
    finally:
        print_summary(summary)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "test-summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
        if not ok:
            kept = out_dir / "test-artifacts"
            shutil.rmtree(kept, ignore_errors=True)
            kept.mkdir(parents=True)
            for log in workdir.glob("*.log"):
                shutil.copy2(log, kept / log.name)
            for xml in workdir.glob("junit-*.xml"):
                shutil.copy2(xml, kept / xml.name)
            info(f"serial logs and test reports kept in {kept}")
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


STICK_PASSPHRASE = "neuraldrive image test"
MARKER = "/var/lib/neuraldrive/config/stick-marker"


def _write_test_stick(iso: Path, image: Path, encrypt: bool) -> None:
    from .usb import write_image
    from .usb_layout import parse_size

    # Test sticks only: a cheap KDF, since the guest unlocks under TCG emulation where argon2id's
    # host-benchmarked cost (1 GiB, ~2 s natively) takes minutes. Real sticks keep the default.
    kdf = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000") if encrypt else ()
    write_image(iso, image, parse_size("3G"), "100%", STICK_PASSPHRASE.encode() if encrypt else None, None, kdf)


def _persistence_source(access: SshAccess) -> str:
    """The block device under /var/lib/neuraldrive and its label (or LUKS mapping)."""
    result = ssh(access, "findmnt -n -o SOURCE -T /var/lib/neuraldrive | sed 's/\\[.*//' | "
                         "xargs -r lsblk -n -o NAME,LABEL,TYPE")
    return result.stdout.strip()


def _no_failed_units(summary: Summary, label: str, figures: BootFigures) -> None:
    if figures.failed_units:
        summary.errors.append(f"{label}: failed units {figures.failed_units}")


def run_stick_tests(profile: Profile, iso: Path, key: Path, workdir: Path, summary: Summary) -> None:
    """`build.py usb --image` output booted as a disk: persistence survives a BIOS → UEFI reboot; an
    encrypted stick boots with the kernel line of the ISO's own "encrypted persistence" menu entry
    and its passphrase typed on the serial console."""
    plain = workdir / "stick.img"
    with complete_step("Writing a test stick image (build.py usb --image)"):
        _write_test_stick(iso, plain, encrypt=False)
    marker = ""
    for firmware in ("bios", "uefi"):
        figures = BootFigures(mode=f"{firmware}-stick")
        summary.boots.append(figures)
        vm = VM(BootSpec(iso=plain, firmware=firmware, media="disk", writable_disk=True,
                         gateway_guest_port=profile.gateway.port), workdir, name=f"{firmware}-stick")
        access = write_ssh_config(workdir, key, vm.forwards.ssh)
        try:
            with complete_step(f"Booting the stick image ({firmware})"):
                vm.start()
                boot_and_wait(vm, access, figures, want_gateway=True)
            source = _persistence_source(access)
            if "persistence" not in source:
                summary.errors.append(f"{firmware}-stick: /var/lib/neuraldrive is not on the persistence "
                                      f"partition ({source or 'unknown'})")
            if not marker:
                marker = f"written on the {firmware} boot at {time.time():.0f}"
                wrote = ssh(access, f"echo '{marker}' | sudo tee {MARKER} >/dev/null && sync && sudo cat {MARKER}")
                if wrote.stdout.strip() != marker:
                    summary.errors.append(f"{firmware}-stick: could not write {MARKER}: {wrote.stderr.strip()}")
            else:
                found = ssh(access, f"sudo cat {MARKER}").stdout.strip()
                if found != marker:
                    mounts = ssh(access, "findmnt -n -T /var/lib/neuraldrive; ls -la /var/lib/neuraldrive/config")
                    summary.errors.append(f"{firmware}-stick: marker from the previous boot is {found!r}, "
                                          f"expected {marker!r} ({mounts.stdout.strip()})")
                else:
                    summary.passed += 1
            _no_failed_units(summary, f"{firmware}-stick", figures)
            poweroff(vm, access)
        finally:
            close_master(access)
            vm.stop()
    encrypted = workdir / "stick-luks.img"
    with complete_step("Writing an encrypted test stick image (build.py usb --image --encrypt)"):
        _write_test_stick(iso, encrypted, encrypt=True)
    figures = BootFigures(mode="bios-stick-luks")
    summary.boots.append(figures)
    # The default entry: an encrypted stick must not need a menu choice to keep its persistence.
    append = grub_entry_append(iso, "neuraldrive")
    vm = VM(BootSpec(iso=encrypted, media="disk", writable_disk=True, kernel_append=append,
                     gateway_guest_port=profile.gateway.port), workdir, name="luks-stick")
    access = write_ssh_config(workdir, key, vm.forwards.ssh)
    try:
        with complete_step("Booting the encrypted stick, typing the passphrase on the serial console"):
            vm.start()
            typing = vm.answer_prompts("Please unlock disk", STICK_PASSPHRASE + "\r")
            try:
                vm.wait_for_serial("Please unlock disk", BOOT_TIMEOUT)
                boot_and_wait(vm, access, figures, want_gateway=True)
            finally:
                typing.set()
        source = _persistence_source(access)
        if "crypt" not in source:
            summary.errors.append(f"encrypted stick: /var/lib/neuraldrive is not on the unlocked LUKS volume "
                                  f"({source or 'unknown'})")
        else:
            summary.passed += 1
        _no_failed_units(summary, "encrypted stick", figures)
    finally:
        close_master(access)
        vm.stop()


def print_summary(summary: Summary) -> None:
    info("")
    info(f"{'boot':<28}{'accel':<6}{'login':>8}{'SSH':>8}{'running':>9}{'gateway':>9}  failed units")
    for b in summary.boots:
        cells = [b.login_prompt_s, b.ssh_s, b.system_running_s, b.gateway_ready_s]
        widths = (8, 8, 9, 9)
        shown = "".join(f"{(f'{c:.0f}s' if c is not None else '-'):>{w}}" for c, w in zip(cells, widths, strict=True))
        info(f"{b.mode:<28}{b.accel:<6}{shown}  {' '.join(b.failed_units) or 'none'}")
    for qemu in sorted({b.qemu for b in summary.boots if b.qemu}):
        info(f"booted with {qemu}")
    for error in summary.errors:
        info(f"error: {error.splitlines()[0]}")
    info(f"{summary.passed} passed, {summary.failed} failed, {summary.skipped} skipped")

