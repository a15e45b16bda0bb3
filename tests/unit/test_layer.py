"""The package layer's key: what changes the installed packages changes it, nothing else does."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from builder.errors import ProfileError
from builder.image import cache as layer
from builder.image.cache import layer_for, layer_key, restore_layer, save_layer
from builder.image.lbconfig import LbOption, lb_config_args, lb_config_options
from builder.image.render import render_tree
from builder.profile import load_profile
from builder.profile.load import with_image_version
from builder.proof import upgrade as proof_upgrade


def tree(tmp_path: Path, packages: str = "caddy\n") -> Path:
    build = tmp_path / "build"
    (build / "config/package-lists").mkdir(parents=True, exist_ok=True)
    (build / "config/package-lists/base.list.chroot").write_text(packages)
    return build


def test_same_inputs_same_key(tmp_path: Path) -> None:
    options = lb_config_options(load_profile("cpu"))
    assert layer_key(options, tree(tmp_path), "1:20250505") == layer_key(list(options), tree(tmp_path), "1:20250505")


def test_package_list_mirror_area_and_live_build_change_the_key(tmp_path: Path) -> None:
    profile = load_profile("cpu")
    base = layer_key(lb_config_options(profile), tree(tmp_path), "1:20250505")
    assert layer_key(lb_config_options(profile), tree(tmp_path / "b", "caddy\nvim\n"), "1:20250505") != base
    mirrors = dataclasses.replace(profile.debian.mirrors, chroot="http://127.0.0.1:9/debian/")
    moved = dataclasses.replace(profile, debian=dataclasses.replace(profile.debian, mirrors=mirrors))
    assert layer_key(lb_config_options(moved), tree(tmp_path), "1:20250505") != base
    assert layer_key(lb_config_options(load_profile("nvidia")), tree(tmp_path), "1:20250505") != base
    assert layer_key(lb_config_options(profile), tree(tmp_path), "1:20260101") != base


def test_boot_menu_and_labels_do_not_change_the_key(tmp_path: Path) -> None:
    profile = load_profile("cpu")
    base = layer_key(lb_config_options(profile), tree(tmp_path), "1:20250505")
    relabelled = dataclasses.replace(profile, image=dataclasses.replace(
        profile.image, volume="OTHER", version="9.9.9", hostname="elsewhere", compression="xz"))
    assert layer_key(lb_config_options(relabelled), tree(tmp_path), "1:20250505") == base
    faster = dataclasses.replace(profile, image=dataclasses.replace(profile.image, compression_level=3))
    args = lb_config_args(faster)
    assert args[args.index("--chroot-squashfs-compression-level") + 1] == "3"
    assert layer_key(lb_config_options(faster), tree(tmp_path), "1:20250505") == base


# The options that shape only the binary stage (boot menu, ISO metadata, squashfs, checksums).
BINARY_ONLY = {"--bootappend-live", "--bootappend-live-failsafe", "--iso-volume", "--iso-application",
               "--iso-publisher", "--hdd-label", "--image-name", "--chroot-squashfs-compression-type",
               "--chroot-squashfs-compression-level", "--bootloaders", "--binary-image", "--checksums", "--zsync",
               "--memtest"}


def test_the_key_ignores_exactly_the_binary_only_options(tmp_path: Path) -> None:
    """Each option's value changed alone: the key moves for every chroot-shaping option, never for a
    binary-only one; and lbconfig marks exactly those binary-only."""
    profile = dataclasses.replace(load_profile("cpu"), image=dataclasses.replace(
        load_profile("cpu").image, compression_level=9))
    options = lb_config_options(profile)
    assert {o.option for o in options if o.binary_only} == BINARY_ONLY
    base = layer_key(options, tree(tmp_path), "1:20250505")
    for index, option in enumerate(options):
        changed = [*options[:index], LbOption(option.option, option.value + "x", option.binary_only),
                   *options[index + 1:]]
        moved = layer_key(changed, tree(tmp_path), "1:20250505") != base
        assert moved == (option.option not in BINARY_ONLY), option.option


def test_save_and_restore_round_trip(tmp_path: Path) -> None:
    build = tree(tmp_path)
    (build / "chroot/etc").mkdir(parents=True)
    (build / "chroot/etc/marker").write_text("layer\n")
    (build / "chroot/usr/bin").mkdir(parents=True)
    (build / "chroot/usr/bin/tool").write_text("#!/bin/sh\n")
    (build / "chroot/usr/bin/tool").chmod(0o4755)
    (build / ".build").mkdir()
    (build / ".build/bootstrap").touch()
    (build / "chroot.packages.install").write_text("caddy\t2.6.2\n")
    layer = layer_for(tmp_path / "cache", "k1")
    save_layer(layer, build)
    assert layer.exists()
    assert [p.name for p in layer.path.parent.iterdir()] == ["k1.tar.zst"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    restore_layer(layer, fresh)
    assert (fresh / "chroot/etc/marker").read_text() == "layer\n"
    assert (fresh / "chroot/usr/bin/tool").stat().st_mode & 0o7777 == 0o4755
    assert (fresh / ".build/bootstrap").exists()
    assert (fresh / "chroot.packages.install").read_text() == "caddy\t2.6.2\n"


def test_only_the_newest_layers_are_kept(tmp_path: Path) -> None:
    build = tree(tmp_path)
    for name in ("chroot", ".build"):
        (build / name).mkdir()
    (build / "chroot.packages.install").write_text("")
    for index in range(5):
        save_layer(layer_for(tmp_path / "cache", f"k{index}"), build)
    assert len(list((tmp_path / "cache/package-layer").glob("*.tar.zst"))) == 3


def test_normalize_mtimes_gives_what_the_packages_wrote_the_epoch(tmp_path: Path) -> None:
    chroot = tmp_path / "chroot"
    (chroot / "usr/bin").mkdir(parents=True)
    from_deb = chroot / "usr/bin/tool"
    from_deb.write_text("x")
    os.utime(from_deb, (1_600_000_000, 1_600_000_000))  # dpkg keeps the package's times
    layer.mark_package_start(tmp_path)
    time.sleep(1.1)
    generated = chroot / "etc/ld.so.cache"
    generated.parent.mkdir()
    generated.write_text("y")
    (chroot / "etc/link").symlink_to("/nonexistent")  # not followed
    epoch = 1_700_000_000
    changed = layer.normalize_mtimes(tmp_path, epoch)
    assert from_deb.stat().st_mtime == 1_600_000_000
    assert generated.stat().st_mtime == epoch and (chroot / "etc").stat().st_mtime == epoch
    assert (chroot / "etc/link").lstat().st_mtime == epoch
    assert changed >= 3


def test_another_image_version_reuses_the_layer(tmp_path: Path) -> None:
    """Release B of the upgrade proof (another image.version, SSH off in the profile) restores release
    A's package layer: the version reaches only the binary stage's labels and hook 02-os-release, SSH
    only units and includes, never the key."""
    release_a = load_profile("test")
    release_b = proof_upgrade.release_b(release_a)
    assert release_b.image.version == "0.1.0+upgrade" and not release_b.ssh.enabled
    keys = [layer_key(lb_config_options(p), render_tree(p, tmp_path / p.image.version, []), "1:20250505")
            for p in (release_a, release_b, with_image_version(release_a, "7"))]
    assert keys[0] == keys[1] == keys[2]
    assert lb_config_args(release_a) != lb_config_args(release_b)  # the ISO's application label differs
    hook = "config/hooks/live/02-os-release.hook.chroot"
    assert (tmp_path / "0.1.0" / hook).read_text() != (tmp_path / "0.1.0+upgrade" / hook).read_text()


def test_an_image_version_is_checked_like_the_profiles() -> None:
    with pytest.raises(ProfileError, match=r"image.version: '1 0' is not a version"):
        with_image_version(load_profile("test"), "1 0")
