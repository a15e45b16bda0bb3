"""`build.py test`: build (or take) a test ISO, boot it in QEMU, run tests/image with testinfra.

Run plan: the full suite on one boot with a persistence disk attached, a clean poweroff, a second
boot on the same disk for the persistence checks, then a smoke boot (console, SSH, no failed
units) for each other boot mode. Figures (boot-to-SSH, boot-to-gateway-ready) are printed and
written to test-summary.json; on failure the serial logs are kept under --out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path

from builder.console import complete_step, info
from builder.errors import VMError
from builder.files import ROOT
from builder.profile import Profile
from builder.proof.boots import BootFigures, boot_and_wait, poweroff
from builder.proof.faults import run_power_cut_tests
from builder.proof.sticks import run_stick_tests
from builder.proof.summary import Summary, print_summary, recorded_figures
from builder.vm.guest import SshAccess, close_master, write_ssh_config
from builder.vm.machine import VM, BootSpec
from builder.vm.media import make_persistence_disk


def pytest_command(phase: str, access: SshAccess, junit: Path, select: str | None = None) -> list[str]:
    """`select` (build.py test -k) narrows the full suite in both its phases: an after-reboot check needs
    the marks its first-boot half left, so the two halves are selected together."""
    marker = "after_reboot" if phase == "after-reboot" else "not after_reboot"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests/image"), "-p", "no:cacheprovider", "-q",
           "-m", marker, f"--ssh-config={access.config}", f"--hosts=ssh://{access.target}",
           f"--junitxml={junit}", "--rootdir", str(ROOT), "-o", "testpaths=tests/image"]
    return [*cmd, "-k", select] if select else cmd


def run_pytest(phase: str, access: SshAccess, vm: VM, env: dict[str, str], workdir: Path,
               select: str | None = None) -> tuple[int, int, int]:
    junit = workdir / f"junit-{phase}.xml"
    cmd = pytest_command(phase, access, junit, select)
    full_env = {**os.environ, **env, "NEURALDRIVE_GATEWAY_PORT": str(vm.forwards.gateway),
                "NEURALDRIVE_ENGINE_FORWARD_PORT": str(vm.forwards.engine),
                "NEURALDRIVE_SERIAL_LOG": str(vm.serial_log),
                "NEURALDRIVE_SERIAL_SOCKET": str(vm.serial_socket), "NEURALDRIVE_SSH_CONFIG": str(access.config)}
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
    select: str | None = None,
    iso_b: Path | None = None,
) -> Summary:
    summary = Summary(iso=str(iso))
    workdir = Path(tempfile.mkdtemp(prefix="neuraldrive-test-"))
    state_file = workdir / "state.json"
    ok = False
    try:
        persistence = make_persistence_disk(workdir / "persistence.qcow2")
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
                info(f"  console {figures.console_s}s, SSH {figures.ssh_s}s, "
                     f"gateway ready {figures.gateway_ready_s}s after QEMU start ({vm.accel})")
                with complete_step(f"Running tests/image ({phase})"):
                    passed, failed, skipped = run_pytest(phase, access, vm, env, workdir, select)
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
            run_stick_tests(profile, iso, key, workdir, summary, iso_b)
            run_power_cut_tests(profile, iso, key, workdir, summary)
        ok = summary.ok
    except VMError as exc:
        summary.errors.append(str(exc))
    finally:
        summary.figures = {**recorded_figures(state_file), **summary.figures}  # the suite's, then the sticks'
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
