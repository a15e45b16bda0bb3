"""`build.py usb`: every check and the whole plan before anything is written, then the write.

Order: target choice, models (every manifest and blob checked), the ISO's EFI partition, the target
(disk safety or image size), the layout (sizes, MBR limits), then, for a disk, the O_EXCL claim held
from before the confirmation to the end of the write. A refusal at any point leaves the disk as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.console import info
from builder.usb.disk import HOST, System, check_disk, claim, inspect_disk
from builder.usb.errors import UsbError
from builder.usb.layout import esp_extent, parse_size, plan_layout
from builder.usb.models import ModelStore, read_store
from builder.usb.write import WriteReport, image_file, write_stick


@dataclass(frozen=True)
class UsbRequest:
    iso: Path
    device: str | None = None
    image: Path | None = None
    size: str = "16G"
    persistence_size: str = "100%"
    encrypt: bool = False
    passphrase_file: Path | None = None
    models_dir: Path | None = None  # a whole store (--models)
    preload: tuple[Path, tuple[str, ...]] | None = None  # a store and the models to take from it (--profile)
    yes: bool = False


def _passphrase(request: UsbRequest, ask: Callable[[], bytes]) -> bytes | None:
    if not request.encrypt:
        return None
    passphrase = request.passphrase_file.read_bytes().rstrip(b"\n") if request.passphrase_file else ask()
    if len(passphrase) < 8:
        raise UsbError("the LUKS passphrase must have at least 8 characters")
    return passphrase


def run_usb(request: UsbRequest, confirm: Callable[[str], object], ask_passphrase: Callable[[], bytes],
            interactive: bool, system: System = HOST) -> WriteReport:
    """`confirm(question)` aborts by raising; `interactive` says whether it can ask at all."""
    if (request.device is None) == (request.image is None):
        raise UsbError("give exactly one of --device /dev/sdX or --image FILE")
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
    iso_size = request.iso.stat().st_size
    esp = esp_extent(request.iso)
    if request.image is not None:
        target_size = parse_size(request.size)
        layout = plan_layout(target_size, iso_size, esp, request.persistence_size)
        if request.image.exists() and request.image.stat().st_size and not request.yes:
            raise UsbError(f"{request.image}: exists; pass --yes to overwrite it")
        passphrase = _passphrase(request, ask_passphrase)
        with image_file(request.image, target_size) as fd:
            return write_stick(request.iso, fd, request.image, layout, passphrase, models)
    assert request.device is not None
    disk = inspect_disk(request.device, system)
    check_disk(disk, iso_size, system)
    layout = plan_layout(disk.size, iso_size, esp, request.persistence_size)
    if not request.yes and not interactive:
        raise UsbError("refusing to erase a disk without confirmation: pass --yes")
    with claim(disk, system) as fd:
        info(f"About to ERASE {disk.describe()}")
        if not request.yes:
            confirm(f"Write {request.iso.name} and a {layout.persistence.size >> 20} MiB persistence partition "
                    f"to {disk.path}?")
        passphrase = _passphrase(request, ask_passphrase)
        return write_stick(request.iso, fd, Path(disk.path), layout, passphrase, models)


def profile_preload(profile_name: str | None) -> tuple[Path, tuple[str, ...]] | None:
    """`usb --profile P`: the store and models P's `preload` names (None: nothing to preload)."""
    if profile_name is None:
        return None
    from builder.profile import load_profile
    from builder.profile.checks import preload_store_path

    profile = load_profile(profile_name)
    store = preload_store_path(profile)
    return (store, profile.preload.models) if profile.preload.models and store is not None else None
