"""`build.py usb`: every check and the whole plan before anything is written, then the write.

Order: target choice, models (every manifest and blob checked), SSH keys, the ISO's EFI partition,
the target (disk safety or image size), the layout (system region, sizes, MBR limits), then, for a
disk, the O_EXCL claim held from before the confirmation to the end of the write. A refusal at any
point leaves the disk as it was. `--upgrade` takes the same path to builder/usb/upgrade.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.console import format_bytes, info
from builder.profile.sshkeys import read_authorized_keys
from builder.usb.disk import HOST, System, check_disk, claim, inspect_disk
from builder.usb.errors import UsbError
from builder.usb.layout import Layout, default_system_size, esp_extent, parse_size, plan_layout
from builder.usb.models import ModelStore, read_store
from builder.usb.upgrade import UpgradeReport, inspect_stick, open_image, plan_upgrade, upgrade_stick
from builder.usb.write import WriteReport, image_file, write_stick


@dataclass(frozen=True)
class UsbRequest:
    iso: Path
    device: str | None = None
    image: Path | None = None
    size: str | None = None  # of a new --image file (default 16G)
    persistence_size: str | None = None  # default 100%
    system_size: str | None = None  # default: default_system_size(ISO)
    encrypt: bool = False
    passphrase_file: Path | None = None
    models_dir: Path | None = None  # a whole store (--models)
    preload: tuple[Path, tuple[str, ...]] | None = None  # a store and the models to take from it (--profile)
    authorized_keys: Path | None = None  # the admin's SSH public keys, onto the persistence partition
    upgrade: bool = False  # rewrite the system region only
    verify_persistence: bool = False  # sha256 of the persistence partition before and after an upgrade
    yes: bool = False


def _passphrase(request: UsbRequest, ask: Callable[[], bytes]) -> bytes | None:
    if not request.encrypt:
        return None
    passphrase = request.passphrase_file.read_bytes().rstrip(b"\n") if request.passphrase_file else ask()
    if len(passphrase) < 8:
        raise UsbError("the LUKS passphrase must have at least 8 characters")
    return passphrase


def plan_stick(request: UsbRequest, target_size: int, iso_size: int, esp: tuple[int, int]) -> Layout:
    """The layout with the system region asked for, or the default one where the target has room for it."""
    persistence = request.persistence_size or "100%"
    if request.system_size is not None:
        return plan_layout(target_size, iso_size, esp, persistence, system_size=parse_size(request.system_size))
    default = default_system_size(iso_size)
    try:
        layout = plan_layout(target_size, iso_size, esp, persistence, system_size=default)
    except UsbError:
        layout = plan_layout(target_size, iso_size, esp, persistence)
        info(f"System region: the ISO only ({format_bytes(layout.persistence.start)}): no room on "
             f"{format_bytes(target_size)} for the default {format_bytes(default)}; `usb --upgrade` then takes "
             f"only a release no larger (--system-size sets it)")
        return layout
    info(f"System region: {format_bytes(default)} (--system-size; default twice the ISO, at least 4 GiB): "
         f"`usb --upgrade` writes later, larger releases there and keeps the persistence partition")
    return layout


def _upgrade(request: UsbRequest, confirm: Callable[[str], object], interactive: bool,
             system: System) -> UpgradeReport:
    given = [name for name, value in (("--encrypt", request.encrypt), ("--passphrase-file", request.passphrase_file),
                                      ("--models", request.models_dir), ("--profile", request.preload),
                                      ("--size", request.size), ("--persistence-size", request.persistence_size),
                                      ("--system-size", request.system_size),
                                      ("--authorized-keys", request.authorized_keys)) if value]
    if given:
        raise UsbError(f"--upgrade keeps the persistence partition and the layout as they are: {', '.join(given)} "
                       f"do not apply (add SSH keys at the device's console)")
    iso_size = request.iso.stat().st_size
    esp = esp_extent(request.iso)
    if request.image is not None:
        fd = open_image(request.image)
        try:
            plan = plan_upgrade(inspect_stick(fd, str(request.image)), iso_size, esp, request.iso.name)
            return upgrade_stick(request.iso, fd, str(request.image), plan, request.verify_persistence)
        finally:
            os.close(fd)
    assert request.device is not None
    disk = inspect_disk(request.device, system)
    check_disk(disk, iso_size, system)
    if not request.yes and not interactive:
        raise UsbError("refusing to upgrade a disk without confirmation: pass --yes")
    with claim(disk, system) as fd:
        plan = plan_upgrade(inspect_stick(fd, disk.path), iso_size, esp, request.iso.name)
        part = plan.persistence
        info(f"About to upgrade {disk.describe()}: its first {format_bytes(part.start)} rewritten, the "
             f"{part.kind} persistence partition ({format_bytes(part.size)}) kept")
        if not request.yes:
            confirm(f"Write {request.iso.name} over the system region of {disk.path}?")
        return upgrade_stick(request.iso, fd, disk.path, plan, request.verify_persistence)


def run_usb(request: UsbRequest, confirm: Callable[[str], object], ask_passphrase: Callable[[], bytes],
            interactive: bool, system: System = HOST) -> WriteReport | UpgradeReport:
    """`confirm(question)` aborts by raising; `interactive` says whether it can ask at all."""
    if (request.device is None) == (request.image is None):
        raise UsbError("give exactly one of --device /dev/sdX or --image FILE")
    if request.upgrade:
        if os.geteuid() != 0 and request.device is not None:
            raise UsbError("upgrading a stick needs root (its block device)")
        return _upgrade(request, confirm, interactive, system)
    if request.verify_persistence:
        raise UsbError("--verify-persistence goes with --upgrade")
    if request.models_dir is not None and request.preload is not None:
        raise UsbError("--models and the profile's preload.models: give one")
    if request.passphrase_file is not None and not request.encrypt:
        raise UsbError("--passphrase-file needs --encrypt")
    if os.geteuid() != 0:
        raise UsbError("writing a stick needs root (partitioning, loop devices, mkfs)")
    models: ModelStore | None = None
    if request.models_dir is not None:
        models = read_store(request.models_dir)
    elif request.preload is not None:
        models = read_store(*request.preload)
    keys = read_authorized_keys(request.authorized_keys) if request.authorized_keys is not None else None
    iso_size = request.iso.stat().st_size
    esp = esp_extent(request.iso)
    if request.image is not None:
        target_size = parse_size(request.size or "16G")
        layout = plan_stick(request, target_size, iso_size, esp)
        if request.image.exists() and request.image.stat().st_size and not request.yes:
            raise UsbError(f"{request.image}: exists; pass --yes to overwrite it")
        passphrase = _passphrase(request, ask_passphrase)
        with image_file(request.image, target_size) as fd:
            return write_stick(request.iso, fd, request.image, layout, passphrase, models, (), keys)
    assert request.device is not None
    disk = inspect_disk(request.device, system)
    check_disk(disk, iso_size, system)
    layout = plan_stick(request, disk.size, iso_size, esp)
    if not request.yes and not interactive:
        raise UsbError("refusing to erase a disk without confirmation: pass --yes")
    with claim(disk, system) as fd:
        info(f"About to ERASE {disk.describe()}")
        if not request.yes:
            confirm(f"Write {request.iso.name} and a {layout.persistence.size >> 20} MiB persistence partition "
                    f"to {disk.path}?")
        passphrase = _passphrase(request, ask_passphrase)
        return write_stick(request.iso, fd, Path(disk.path), layout, passphrase, models, (), keys)


def profile_preload(profile_name: str | None) -> tuple[Path, tuple[str, ...]] | None:
    """`usb --profile P`: the store and models P's `preload` names (None: nothing to preload)."""
    if profile_name is None:
        return None
    from builder.profile import load_profile
    from builder.profile.checks import preload_store_path

    profile = load_profile(profile_name)
    store = preload_store_path(profile)
    return (store, profile.preload.models) if profile.preload.models and store is not None else None
