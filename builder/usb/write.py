"""Write the stick: the hybrid ISO, then a `persistence` partition after it (ext4, or LUKS2 + ext4).

Everything that can be refused is decided first, before a byte is written: the target disk and what
uses it (usb_disk), the whole layout (usb_layout), the models to preload (usb_models). The disk is
then held with O_EXCL for the entire write and written through that one fd. The written image
region is read back and compared with the ISO's sha256 before the partition is added. A disk-image
file (`--image`) goes through the same steps, which is how tests exercise them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from builder.console import ProgressLine, download_status, format_bytes, info
from builder.facts import OLLAMA_UID
from builder.usb.content import lay_out, own_models_dir
from builder.usb.errors import UsbError, UsbWriteError
from builder.usb.layout import GPT_BACKUP_SECTORS, MBR_ENTRIES, SECTOR, Layout, PartitionPlan, esp_extent, plan_layout
from builder.usb.models import ModelStore, copy_store

CHUNK = 4 << 20
# Room that in-place LUKS2 encryption takes from the end of the filesystem for its header.
LUKS_RESERVE = 32 << 20


@dataclass
class WriteReport:
    target: str
    iso_sha256: str
    written_bytes: int
    write_seconds: float
    verify_seconds: float
    partition: PartitionPlan | None = None
    encrypted: bool = False
    models: list[str] = field(default_factory=list)

    @property
    def write_rate(self) -> float:
        return self.written_bytes / self.write_seconds if self.write_seconds else 0.0

    def summary(self) -> str:
        plan = self.partition
        return (f"wrote {self.target}: {self.written_bytes >> 20} MiB at {self.write_rate / 2**20:.0f} MiB/s, "
                f"verified in {self.verify_seconds:.1f}s; system region {plan.start >> 20 if plan else 0} MiB, "
                f"persistence {plan.size >> 20 if plan else 0} MiB"
                f"{' (LUKS2)' if self.encrypted else ''}; models: {len(self.models)}")


def write_iso(iso: Path, fd: int) -> tuple[str, int, float]:
    """Copy the ISO to the start of the target `fd` with progress and fsync; returns (sha256, bytes, seconds)."""
    size = iso.stat().st_size
    digest = hashlib.sha256()
    progress = ProgressLine()
    started = time.monotonic()
    done = 0
    with iso.open("rb") as source:
        for block in iter(lambda: source.read(CHUNK), b""):
            view = memoryview(block)
            while view:
                view = view[os.pwrite(fd, view, done + len(block) - len(view)):]
            digest.update(block)
            done += len(block)
            progress.update(download_status(done, size, started))
    os.fsync(fd)
    progress.update(download_status(done, size, started), force=True)
    progress.close()
    return digest.hexdigest(), done, time.monotonic() - started


def read_back_sha256(fd: int, length: int) -> str:
    """sha256 of the first `length` bytes as the device returns them (page cache dropped first)."""
    digest = hashlib.sha256()
    os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
    offset = 0
    while offset < length:
        block = os.pread(fd, min(CHUNK, length - offset), offset)
        if not block:
            break
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def verify_written(fd: int, length: int, digest: str, target: object, what: str) -> float:
    """Read the first `length` bytes back from the device and compare with `digest` (of `what`);
    returns the seconds it took."""
    info("‣ Verifying what was written…")
    started = time.monotonic()
    readback = read_back_sha256(fd, length)
    if readback != digest:
        raise UsbWriteError(f"{target}: read-back sha256 {readback} differs from {what} {digest}")
    return time.monotonic() - started


def write_partition_table(fd: int, layout: Layout) -> None:
    """Give the stick the layout Debian's own hybrid images have: an MBR whose partition 1 starts at
    sector 0 and spans the ISO 9660 file system, partition 2 the EFI image, partition 3 persistence.

    Why not keep the ISO's GPT and append to it: there no partition holds the ISO file system, so
    live-boot mounts the whole disk as its medium, and the kernel then refuses to mount any partition
    of that disk (the whole device is claimed), persistence included. With partition 1 as the medium,
    partition 3 mounts. The GPT headers are wiped so firmware and kernel read the MBR.
    """
    os.pwrite(fd, layout.mbr_entries + b"\x55\xaa", MBR_ENTRIES)
    os.pwrite(fd, bytes(SECTOR), SECTOR)  # primary GPT header
    # Whatever GPT backup the stick had at its end (ours, or from an earlier life).
    os.pwrite(fd, bytes(GPT_BACKUP_SECTORS * SECTOR), layout.backup_gpt_offset)
    os.fsync(fd)


@contextmanager
def loop_device(target: Path, plan: PartitionPlan) -> Iterator[str]:
    """The persistence partition as a block device (a loop over its byte range: devices and images alike)."""
    result = subprocess.run(["losetup", "--find", "--show", "--offset", str(plan.start), "--sizelimit",
                             str(plan.size), str(target)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbWriteError(f"losetup: {result.stderr.strip()} (loop devices are needed to format the partition)")
    device = result.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def _cryptsetup(args: list[str], passphrase: bytes) -> None:
    result = subprocess.run(["cryptsetup", *args], input=passphrase, capture_output=True, check=False)
    if result.returncode != 0:
        raise UsbWriteError(f"cryptsetup {args[0]}: {result.stderr.decode(errors='replace').strip()}")


def luks_encrypt_in_place(device: str, passphrase: bytes, kdf: tuple[str, ...] = ()) -> None:
    """Turn the populated filesystem into LUKS2 (offline: no device-mapper needed on the build host).

    `kdf`: extra cryptsetup PBKDF options. Empty (the default for every stick) keeps cryptsetup's
    argon2id benchmarked cost; image tests pass a cheap one because unlocking runs under emulation.
    """
    # The LUKS2 label "persistence" is what the default boot entry (live-boot's lukslabel) opens.
    _cryptsetup(["reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size", f"{LUKS_RESERVE >> 20}M",
                 "--label", "persistence", *kdf, "--batch-mode", "--key-file", "-", device], passphrase)


def luks_passphrase_opens(device: str, passphrase: bytes) -> bool:
    result = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", "-", device],
                            input=passphrase, capture_output=True, check=False)
    return result.returncode == 0


def populate(device: str, models: ModelStore | None, size: int, authorized_keys: list[str] | None = None) -> None:
    """ext4 labelled `persistence` (`size` bytes) holding persistence.conf, the appliance's state tree,
    the journal's dir and the admin's SSH keys (builder/usb/content.py)."""
    result = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "persistence", device, str(size // 1024)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UsbWriteError(f"mkfs.ext4 {device}: {result.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="neuraldrive-usb-") as mnt:
        subprocess.run(["mount", device, mnt], check=True)
        try:
            model_dir = lay_out(Path(mnt), authorized_keys)
            if models is not None:
                copy_store(models, model_dir, OLLAMA_UID)
            own_models_dir(model_dir)
        finally:
            subprocess.run(["sync"], check=False)
            subprocess.run(["umount", mnt], check=True)


def write_stick(iso: Path, fd: int, target: Path, layout: Layout, passphrase: bytes | None,
                models: ModelStore | None, kdf: tuple[str, ...] = (),
                authorized_keys: list[str] | None = None) -> WriteReport:
    """Write, verify, partition, format, populate through `fd` (the claimed target). Every step raises on failure."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size != layout.target_size:
        raise UsbError(f"{target}: is {size} bytes now, not the {layout.target_size} the layout was planned for")
    plan = layout.persistence
    info(f"‣ Writing {iso.name} to {target}…")
    digest, written, seconds = write_iso(iso, fd)
    info(f"  {format_bytes(written)} in {seconds:.1f}s ({format_bytes(written / max(seconds, 1e-3))}/s)")
    verify_seconds = verify_written(fd, written, digest, target, "the ISO's")
    info(f"  sha256 {digest} matches")
    info(f"‣ Adding the persistence partition ({format_bytes(plan.size)}"
         f"{', LUKS2-encrypted' if passphrase else ''})…")
    write_partition_table(fd, layout)
    with loop_device(target, plan) as device:
        if passphrase is None:
            populate(device, models, plan.size, authorized_keys)
        else:
            populate(device, models, plan.size - LUKS_RESERVE, authorized_keys)
            info("‣ Encrypting the persistence partition (LUKS2)…")
            luks_encrypt_in_place(device, passphrase, kdf)
            if not luks_passphrase_opens(device, passphrase):
                raise UsbWriteError(f"{target}: the new LUKS2 volume does not open with the passphrase")
    return WriteReport(target=str(target), iso_sha256=digest, written_bytes=written, write_seconds=seconds,
                       verify_seconds=verify_seconds, partition=plan, encrypted=passphrase is not None,
                       models=models.names if models is not None else [])


@contextmanager
def image_file(path: Path, size: int) -> Iterator[int]:
    """A disk-image file of `size` bytes, opened read-write (never through a symlink); removed on failure."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsbError(f"{path}: cannot create the image: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
        yield fd
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written image behind
        raise
    finally:
        os.close(fd)


def write_image(iso: Path, image: Path, size: int, persistence: str, passphrase: bytes | None,
                models: ModelStore | None, kdf: tuple[str, ...] = (), system_size: int = 0,
                authorized_keys: list[str] | None = None) -> WriteReport:
    """`usb --image` in one call: plan the layout (UsbError before the file exists), then write it."""
    layout = plan_layout(size, iso.stat().st_size, esp_extent(iso), persistence, system_size=system_size)
    with image_file(image, size) as fd:
        return write_stick(iso, fd, image, layout, passphrase, models, kdf, authorized_keys)
