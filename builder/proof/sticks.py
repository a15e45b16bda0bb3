"""Stick tests: `build.py usb --image` output booted as a disk, then upgraded in place.

A plain stick boots release A under BIOS, is used (model, marker, keys), upgraded to release B with
`usb --upgrade --image` and boots B under UEFI with all of it kept; a LUKS stick does the same with
its passphrase typed on the serial console. Both carry a second SSH key given only at write time
(`usb --authorized-keys`): A lets it in beside the image's key, and B, built without SSH in its
profile, is reached with it alone (builder/proof/upgrade.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder import facts
from builder.console import complete_step, info
from builder.profile import Profile
from builder.profile.sshkeys import read_authorized_keys
from builder.proof import upgrade
from builder.proof.boots import BOOT_TIMEOUT, BootFigures, boot_and_wait, poweroff
from builder.proof.summary import Summary
from builder.usb.layout import align_up, parse_size
from builder.usb.write import write_image
from builder.vm.guest import SshAccess, close_master, generate_key, ssh, write_ssh_config
from builder.vm.machine import VM, BootSpec
from builder.vm.media import grub_entry_append

STICK_PASSPHRASE = "neuraldrive image test"
MARKER = upgrade.MARKER
# Room for release B after A (the same image but for its version strings): the upgrade must fit.
TEST_SYSTEM_HEADROOM = 64 << 20


def write_test_stick(iso: Path, image: Path, encrypt: bool, authorized_keys: list[str] | None = None) -> None:
    # Test sticks only: a cheap KDF, since the guest unlocks under TCG emulation where argon2id's
    # host-benchmarked cost (1 GiB, ~2 s natively) takes minutes. Real sticks keep the default.
    kdf = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000") if encrypt else ()
    system = align_up(iso.stat().st_size) + TEST_SYSTEM_HEADROOM
    write_image(iso, image, parse_size("3G"), "100%", STICK_PASSPHRASE.encode() if encrypt else None, None, kdf,
                system_size=system, authorized_keys=authorized_keys)


def _persistence_source(access: SshAccess) -> str:
    """The block device under /var/lib/neuraldrive and its label (or LUKS mapping)."""
    result = ssh(access, f"findmnt -n -o SOURCE -T {facts.STATE_DIR} | sed 's/\\[.*//' | "
                         "xargs -r lsblk -n -o NAME,LABEL,TYPE")
    return result.stdout.strip()


@contextmanager
def booted(profile: Profile, image: Path, key: Path, workdir: Path, summary: Summary, label: str,
           firmware: str = "bios", append: str | None = None) -> Iterator[tuple[VM, SshAccess]]:
    """The stick booted to a ready gateway (`append`: the ISO's kernel with that command line and the
    LUKS passphrase typed), checked to be on its persistence partition; powered off cleanly after."""
    figures = BootFigures(mode=label)
    summary.boots.append(figures)
    vm = VM(BootSpec(iso=image, firmware=firmware, media="disk", writable_disk=True, kernel_append=append,
                     gateway_guest_port=profile.gateway.port), workdir, name=label)
    access = write_ssh_config(workdir, key, vm.forwards.ssh)
    try:
        with complete_step(f"Booting {label}"):
            vm.start()
            typing = vm.answer_prompts("Please unlock disk", STICK_PASSPHRASE + "\r") if append else None
            try:
                if typing is not None:
                    vm.wait_for_serial("Please unlock disk", BOOT_TIMEOUT)
                boot_and_wait(vm, access, figures, want_gateway=True)
            finally:
                if typing is not None:
                    typing.set()
        source = _persistence_source(access)
        want = "crypt" if append else "persistence"
        if want not in source:
            summary.errors.append(f"{label}: {facts.STATE_DIR} is not on the persistence partition ({source or '?'})")
        if figures.failed_units:
            summary.errors.append(f"{label}: failed units {figures.failed_units}")
        yield vm, access
        poweroff(vm, access)
    finally:
        close_master(access)
        vm.stop()


def _stick_key_opens(workdir: Path, stick_key: Path, port: int, label: str, summary: Summary) -> None:
    """The key given only to `usb --authorized-keys` logs in (sshd reads the stick's file too)."""
    access = write_ssh_config(stick_key.parent, stick_key, port)
    try:
        result = ssh(access, "id -un")
    finally:
        close_master(access)
    if result.stdout.strip() != facts.ADMIN_USER:
        summary.errors.append(f"{label}: the stick's SSH key did not log in: {result.stderr.strip()[-200:]}")
    else:
        summary.passed += 1


def _prove_stick(profile: Profile, iso: Path, iso_b: Path | None, key: Path, stick_key: Path, workdir: Path,
                 summary: Summary, encrypt: bool) -> None:
    kind = "luks-stick" if encrypt else "stick"
    image = workdir / f"{kind}.img"
    with complete_step(f"Writing a {'LUKS ' if encrypt else ''}test stick image (build.py usb --image "
                       f"--authorized-keys{' --encrypt' if encrypt else ''})"):
        write_test_stick(iso, image, encrypt, read_authorized_keys(Path(f"{stick_key}.pub")))
    append = grub_entry_append(iso, "neuraldrive") if encrypt else None  # the default entry: no menu choice
    with booted(profile, image, key, workdir, summary, f"bios-{kind} (release A)", "bios", append) as (vm, access):
        _stick_key_opens(workdir, stick_key, vm.forwards.ssh, f"{kind} A", summary)
        state_a = upgrade.use_the_device(access, f"{kind} A", summary)
    if iso_b is None:
        summary.skipped += 1
        info(f"  no release B beside {iso.name}: the upgrade of the {kind} is not proved")
        return
    with complete_step(f"Upgrading the {kind} to {iso_b.name} (build.py usb --upgrade --image)"):
        report = upgrade.upgrade(iso_b, image, kind, summary)
    if report is None:
        return
    info(f"  {report.summary()}")
    profile_b = upgrade.release_b(profile)
    append_b = grub_entry_append(iso_b, "neuraldrive") if encrypt else None
    firmware = "bios" if encrypt else "uefi"  # the LUKS entry's kernel is booted directly either way
    with booted(profile_b, image, stick_key, workdir, summary, f"{firmware}-{kind} (release B)", firmware,
                append_b) as (vm, access):
        upgrade.check_release_b(access, key, workdir, vm.forwards.ssh, state_a, profile_b, f"{kind} B", summary)


def run_stick_tests(profile: Profile, iso: Path, key: Path, workdir: Path, summary: Summary,
                    iso_b: Path | None = None) -> None:
    """A plain and a LUKS stick: written from release A with a second SSH key, used, upgraded in place to
    release B (when `iso_b` is given), booted again with everything kept."""
    (workdir / "stick-key").mkdir(exist_ok=True)
    stick_key = generate_key(workdir / "stick-key")
    for encrypt in (False, True):
        _prove_stick(profile, iso, iso_b, key, stick_key, workdir, summary, encrypt)
