"""The exact `lb config` arguments a profile asks for (trixie live-build, 1:20250505 or newer), each
marked with the stage it shapes."""

from __future__ import annotations

from typing import NamedTuple

from builder.profile.schema import Profile


def boot_append(profile: Profile) -> str:
    """Kernel command line of the default entry.

    live-config runs none of its components and sets up no autologin: host name, users, SSH host
    keys and the rest are the image's own files and first-boot job (no default `user` account with
    the `live` password; measured ~30 s less boot under TCG).
    """
    return " ".join(
        [
            "boot=live",
            "live-config.nocomponents",
            "live-config.noautologin",
            "persistence",
            # The persistence partition is on the boot stick, whose drivers are already loaded:
            # skip live-boot's USB re-scan (udevadm trigger + up to 5 s of sleeps).
            "quickusbmodules",
            # The last console is /dev/console: systemd's status lines go to the serial port, where
            # boot failures are visible to headless installs and to the QEMU harness.
            "console=tty0",
            "console=ttyS0,115200",
        ]
    )


class LbOption(NamedTuple):
    option: str
    value: str
    # Shapes only the binary stage (boot menu, ISO labels, squashfs, checksums): a change must not
    # rebuild the package layer, whose key (cache.layer_key) skips these.
    binary_only: bool = False


BINARY = True


def lb_config_options(profile: Profile) -> list[LbOption]:
    m = profile.debian.mirrors
    compression_level = profile.image.compression_level
    return [
        LbOption("--mode", "debian"),
        LbOption("--distribution", profile.debian.suite),
        LbOption("--architecture", "amd64"),
        LbOption("--binary-image", "iso-hybrid", BINARY),
        LbOption("--bootloaders", "grub-efi grub-pc", BINARY),
        LbOption("--archive-areas", " ".join(profile.debian.areas)),
        LbOption("--parent-archive-areas", " ".join(profile.debian.areas)),
        LbOption("--mirror-bootstrap", m.bootstrap),
        LbOption("--mirror-chroot", m.chroot),
        LbOption("--mirror-binary", m.binary),
        LbOption("--mirror-chroot-security", m.security),
        LbOption("--mirror-binary-security", m.security),
        LbOption("--parent-mirror-bootstrap", m.bootstrap),
        LbOption("--parent-mirror-chroot", m.chroot),
        LbOption("--parent-mirror-binary", m.binary),
        LbOption("--parent-mirror-chroot-security", m.security),
        LbOption("--parent-mirror-binary-security", m.security),
        LbOption("--security", "true"),
        LbOption("--updates", "true"),
        LbOption("--backports", "true" if profile.debian.backports else "false"),
        LbOption("--apt-recommends", "false"),
        LbOption("--apt-indices", "false"),
        LbOption("--apt-source-archives", "false"),
        LbOption("--debian-installer", "none"),
        LbOption("--firmware-binary", "false"),
        LbOption("--firmware-chroot", "false"),
        LbOption("--memtest", "none", BINARY),
        LbOption("--zsync", "false", BINARY),
        LbOption("--checksums", "sha256", BINARY),
        LbOption("--linux-flavours", "amd64"),
        LbOption("--initsystem", "systemd"),
        LbOption("--initramfs", "live-boot"),
        LbOption("--debootstrap-options", "--variant=minbase"),
        LbOption("--chroot-squashfs-compression-type", profile.image.compression, BINARY),
        *([LbOption("--chroot-squashfs-compression-level", str(compression_level), BINARY)]
          if compression_level is not None else []),
        LbOption("--iso-volume", profile.image.volume, BINARY),
        LbOption("--iso-application", f"NeuralDrive {profile.image.version}", BINARY),
        LbOption("--iso-publisher", "NeuralDrive", BINARY),
        LbOption("--hdd-label", profile.image.volume.upper().replace(" ", "_"), BINARY),
        LbOption("--bootappend-live", boot_append(profile), BINARY),
        LbOption("--bootappend-live-failsafe", "none", BINARY),
        LbOption("--cache", "true"),
        LbOption("--cache-packages", "true"),
        LbOption("--cache-indices", "false"),
        LbOption("--cache-stages", "bootstrap"),
        LbOption("--image-name", f"{profile.image.name}", BINARY),
    ]


def lb_config_args(profile: Profile) -> list[str]:
    return [arg for option in lb_config_options(profile) for arg in (option.option, option.value)]
