"""What a guest boots from and keeps: files read out of the ISO (kernel, grub menu entries) and the
qcow2 persistence disk."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from builder.errors import VMError
from builder.usb.content import lay_out, own_models_dir


def extract_from_iso(iso: Path, member: str, dest: Path) -> Path:
    """Copy one file out of the ISO with xorriso (no loop mount, no root needed)."""
    result = subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", member, str(dest)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 or not dest.is_file():
        raise VMError(f"{iso}: cannot extract {member}: {result.stderr.strip().splitlines()[-1:]}")
    return dest


def iso_kernel_path(iso: Path) -> str:
    """live-build names the kernel /live/vmlinuz-<version>."""
    listing = subprocess.run(["xorriso", "-indev", str(iso), "-ls", "/live"], capture_output=True, text=True,
                             check=False).stdout
    kernels = sorted(name.strip("'") for name in listing.split() if name.strip("'").startswith("vmlinuz"))
    if not kernels:
        raise VMError(f"{iso}: no kernel under /live")
    return f"/live/{kernels[-1]}"


def menu_entry_append(grub_cfg: str, entry_id: str) -> str:
    """The kernel arguments of the grub menu entry `--id entry_id` (what the operator would boot)."""
    match = re.search(rf"^menuentry [^\n]*--id {re.escape(entry_id)} \{{\n\s*linux\s+\S+\s+([^\n]*)$",
                      grub_cfg, re.MULTILINE)
    if match is None:
        raise VMError(f"grub.cfg: no menu entry --id {entry_id} with a linux line")
    # grub expands a variable it has not set (live-build's ${iso_path} outside loopback boots) to "".
    return " ".join(re.sub(r"\$\{[^}]*\}", "", match.group(1)).split())


def grub_entry_append(iso: Path, entry_id: str) -> str:
    with tempfile.TemporaryDirectory(prefix="neuraldrive-grub-") as tmp:
        cfg = extract_from_iso(iso, "/boot/grub/grub.cfg", Path(tmp) / "grub.cfg")
        return menu_entry_append(cfg.read_text(), entry_id)


def make_persistence_disk(path: Path, size: str = "2G") -> Path:
    """An ext4 disk labelled `persistence` holding what a stick's has (persistence.conf, the state and
    journal dirs), built without mounting."""
    with tempfile.TemporaryDirectory() as tmp:
        own_models_dir(lay_out(Path(tmp)))
        raw = path.with_suffix(".raw")
        subprocess.run(["truncate", "-s", size, str(raw)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "persistence", "-d", tmp, str(raw)], check=True)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return path
