"""The exact `lb config` arguments a profile asks for (trixie live-build, 1:20250505 or newer)."""

from __future__ import annotations

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


def lb_config_args(profile: Profile) -> list[str]:
    m = profile.debian.mirrors
    return [
        "--mode", "debian",
        "--distribution", profile.debian.suite,
        "--architecture", "amd64",
        "--binary-image", "iso-hybrid",
        "--bootloaders", "grub-efi grub-pc",
        "--archive-areas", " ".join(profile.debian.areas),
        "--parent-archive-areas", " ".join(profile.debian.areas),
        "--mirror-bootstrap", m.bootstrap,
        "--mirror-chroot", m.chroot,
        "--mirror-binary", m.binary,
        "--mirror-chroot-security", m.security,
        "--mirror-binary-security", m.security,
        "--parent-mirror-bootstrap", m.bootstrap,
        "--parent-mirror-chroot", m.chroot,
        "--parent-mirror-binary", m.binary,
        "--parent-mirror-chroot-security", m.security,
        "--parent-mirror-binary-security", m.security,
        "--security", "true",
        "--updates", "true",
        "--backports", "true" if profile.debian.backports else "false",
        "--apt-recommends", "false",
        "--apt-indices", "false",
        "--apt-source-archives", "false",
        "--debian-installer", "none",
        "--firmware-binary", "false",
        "--firmware-chroot", "false",
        "--memtest", "none",
        "--zsync", "false",
        "--checksums", "sha256",
        "--linux-flavours", "amd64",
        "--initsystem", "systemd",
        "--initramfs", "live-boot",
        "--debootstrap-options", "--variant=minbase",
        "--chroot-squashfs-compression-type", profile.image.compression,
        *(("--chroot-squashfs-compression-level", str(profile.image.compression_level))
          if profile.image.compression_level is not None else ()),
        "--iso-volume", profile.image.volume,
        "--iso-application", f"NeuralDrive {profile.image.version}",
        "--iso-publisher", "NeuralDrive",
        "--hdd-label", profile.image.volume.upper().replace(" ", "_"),
        "--bootappend-live", boot_append(profile),
        "--bootappend-live-failsafe", "none",
        "--cache", "true",
        "--cache-packages", "true",
        "--cache-indices", "false",
        "--cache-stages", "bootstrap",
        "--image-name", f"{profile.image.name}",
    ]
