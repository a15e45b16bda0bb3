"""The binary-tools chroot: the outer chroot in which live-build's binary stage runs mksquashfs,
grub-mkimage and xorriso, made once and cached.

`lb binary` makes it afresh on every build: a copy of the bootstrap gets squashfs-tools, then each
later helper installs its tools into the image chroot (after the squashfs is taken) and purges
them again, with three apt index updates on the way — about half of a warm build, producing
nothing new. Here the bootstrap copy gets every tool once; the result is cached beside the
bootstrap and unpacked as the outer chroot on each build (cache.py: tools_key, save_tools,
restore_tools). The squashfs is still made from the
image chroot (`chroot/chroot`), so no tool reaches the image, and the tools are the same packages
the helpers would have installed, so the ISO is the same.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from builder.errors import LiveBuildError

# (file a binary helper checks for, package it installs when the file is missing) — the checks of
# binary_rootfs (squashfs), binary_grub-pc, binary_grub-efi (amd64, Secure Boot "auto") and
# binary_iso for our `lb config`. binary_bootloader_splash is not run (no theme shows a splash).
BINARY_TOOLS: tuple[tuple[str, str], ...] = (
    ("usr/share/doc/squashfs-tools", "squashfs-tools"),
    ("usr/bin/grub-mkimage", "grub-common"),
    ("usr/lib/grub/i386-pc/vga.mod", "grub-pc-bin"),
    ("usr/lib/grub/x86_64-efi/configfile.mod", "grub-efi-amd64-bin"),
    ("usr/lib/grub/i386-efi/configfile.mod", "grub-efi-ia32-bin"),
    ("usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed", "grub-efi-amd64-signed"),
    ("usr/lib/shim/shimx64.efi.signed", "shim-signed"),
    ("usr/bin/mcopy", "mtools"),
    ("sbin/mkfs.msdos", "dosfstools"),
    ("usr/bin/xorriso", "xorriso"),
    ("usr/lib/ISOLINUX/isohdpfx.bin", "isolinux"),
)
# What the helpers after binary_rootfs read from `chroot/` about the image (kernel and initrd,
# live-boot's parameter list, the release for .disk/info): lent from the image chroot.
LENT_FROM_IMAGE = ("boot", "usr/share/doc/live-boot/parameters.txt", "etc/os-release")
# live-build's own record of packages a helper installed and must purge again.
_TMP_PACKAGES = "chroot.installed_tmp_pkgs"


def install_script() -> str:
    """Shell that installs every tool with live-build's own functions (its apt options and .deb
    cache), then forgets them as temporary so no helper purges them."""
    checks = "\n".join(f"Check_package chroot /{path} {package}" for path, package in BINARY_TOOLS)
    return (
        "set -e\n"
        ". /usr/lib/live/build.sh\n"
        "Init_config_data\n"
        f"{checks}\n"
        "Restore_package_cache binary\n"
        "Install_packages\n"
        "Save_package_cache binary\n"
        f"rm -f {_TMP_PACKAGES}\n"
    )


def check_tools(build_dir: Path) -> None:
    chroot = build_dir / "chroot"
    missing = [package for path, package in BINARY_TOOLS if not (chroot / path).exists()]
    if missing:
        raise LiveBuildError(f"binary-tools chroot lacks {', '.join(missing)}: rebuild with --no-cache")


def lend_image_files(build_dir: Path) -> None:
    """Copy into the outer chroot what later helpers read there about the image. Copies, not hard
    links: mksquashfs is about to read the inner chroot and must see its files as they are."""
    outer, image = build_dir / "chroot", build_dir / "chroot/chroot"
    for relative in LENT_FROM_IMAGE:
        source, target = _inside(image, relative), outer / relative
        if source is None:
            continue
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _inside(root: Path, relative: str) -> Path | None:
    """`relative` under `root`, its symlinks resolved as inside the image (never leaving `root`)."""
    for _ in range(40):
        path = root / relative
        if not path.is_symlink():
            return path if path.exists() else None
        target = os.readlink(path)
        joined = target if target.startswith("/") else os.path.join(os.path.dirname(relative), target)
        relative = os.path.normpath("/" + joined).lstrip("/")  # ".." stops at the image's root
    raise LiveBuildError(f"{root / relative}: symlink loop")
