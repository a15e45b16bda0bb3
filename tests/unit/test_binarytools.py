"""The cached binary-tools chroot: its key, what is lent to it from the image, unpacking it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import LiveBuildError
from builder.image import binarytools, cache


def build_dir_with_image(tmp_path: Path) -> Path:
    build = tmp_path / "build"
    image = build / "chroot/chroot"
    (image / "boot").mkdir(parents=True)
    (image / "boot/vmlinuz-6.12.48+deb13-amd64").write_text("kernel")
    (image / "boot/initrd.img-6.12.48+deb13-amd64").write_text("initrd")
    (image / "usr/lib").mkdir(parents=True)
    (image / "usr/lib/os-release").write_text('NAME="NeuralDrive"\nVERSION_ID="13"\n')
    (image / "etc").mkdir()
    (image / "etc/os-release").symlink_to("../usr/lib/os-release")
    (build / "chroot/etc").mkdir()
    (build / "chroot/etc/os-release").symlink_to("../usr/lib/os-release")  # the bootstrap's own
    return build


def test_image_files_are_lent_to_the_outer_chroot(tmp_path: Path) -> None:
    build = build_dir_with_image(tmp_path)
    binarytools.lend_image_files(build)
    outer = build / "chroot"
    assert (outer / "boot/vmlinuz-6.12.48+deb13-amd64").read_text() == "kernel"
    assert (outer / "boot/initrd.img-6.12.48+deb13-amd64").read_text() == "initrd"
    # The image's release, resolved inside the image, not through the outer chroot's link.
    assert not (outer / "etc/os-release").is_symlink()
    assert "NeuralDrive" in (outer / "etc/os-release").read_text()
    assert not (outer / "usr/share/doc/live-boot").exists()  # absent in the image: nothing lent
    # Copies: the image's files keep one link each (mksquashfs reads them next).
    assert os.stat(build / "chroot/chroot/boot/vmlinuz-6.12.48+deb13-amd64").st_nlink == 1


def test_absolute_links_resolve_inside_the_image_never_the_host(tmp_path: Path) -> None:
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    (image / "etc/os-release").symlink_to("/../../usr/lib/os-release")
    assert binarytools._inside(image, "etc/os-release") is None  # the host's file is not picked up
    (image / "usr/lib").mkdir(parents=True)
    (image / "usr/lib/os-release").write_text("ID=debian\n")
    assert binarytools._inside(image, "etc/os-release") == image / "usr/lib/os-release"
    (image / "loop").symlink_to("loop")
    with pytest.raises(LiveBuildError, match="symlink loop"):
        binarytools._inside(image, "loop")


def test_missing_tools_are_named(tmp_path: Path) -> None:
    (tmp_path / "chroot").mkdir()
    for path, _ in binarytools.BINARY_TOOLS[1:]:
        (tmp_path / "chroot" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "chroot" / path).touch()
    with pytest.raises(LiveBuildError, match="binary-tools chroot lacks squashfs-tools: rebuild with --no-cache"):
        binarytools.check_tools(tmp_path)


def test_key_follows_the_bootstrap_and_live_build(tmp_path: Path) -> None:
    with pytest.raises(LiveBuildError, match="no cached bootstrap"):
        cache.tools_key(tmp_path, "1:20250505")
    status = tmp_path / "cache/bootstrap/var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: base-files\nVersion: 13.8\n")
    key = cache.tools_key(tmp_path, "1:20250505")
    assert cache.tools_key(tmp_path, "1:20250505") == key
    assert cache.tools_key(tmp_path, "1:20250506") != key
    status.write_text("Package: base-files\nVersion: 13.9\n")
    assert cache.tools_key(tmp_path, "1:20250505") != key


def test_install_script_checks_every_tool_and_keeps_them(tmp_path: Path) -> None:
    script = binarytools.install_script()
    for path, package in binarytools.BINARY_TOOLS:
        assert f"Check_package chroot /{path} {package}\n" in script
    # Forgetting live-build's list of temporary packages is what keeps later helpers from purging them.
    assert script.index("Install_packages") < script.index("rm -f chroot.installed_tmp_pkgs")


def test_a_damaged_tools_archive_is_named_with_the_way_out(tmp_path: Path) -> None:
    build = build_dir_with_image(tmp_path)
    archive = tmp_path / "binary-tools-k.tar.zst"
    archive.write_bytes(b"not a tar")
    (build / ".build").mkdir()
    with pytest.raises(LiveBuildError, match=r"binary-tools restore from .*binary-tools-k.tar.zst failed: .*"
                                             r"\(delete it or build with --no-cache\)"):
        cache.restore_tools(build, archive)


def test_unpack_puts_the_image_inside_the_cached_tools(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    (tools / "usr/bin").mkdir(parents=True)
    (tools / "usr/bin/xorriso").write_text("tool")
    archive = tmp_path / "binary-tools-k.tar.zst"
    cache.archive_tree(tools, archive)
    build = tmp_path / "build"
    (build / "chroot/etc").mkdir(parents=True)
    (build / "chroot/etc/image-marker").write_text("image")
    (build / ".build").mkdir()
    cache.restore_tools(build, archive)
    assert (build / "chroot/usr/bin/xorriso").read_text() == "tool"
    assert (build / "chroot/chroot/etc/image-marker").read_text() == "image"
    assert (build / ".build/binary_chroot").exists()
    assert not (build / "chroot.image").exists()
