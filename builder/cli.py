"""The option groups build.py's commands share, each defined once, and the error mapping every command
wears (`Commands`): a NeuralDriveError becomes one line on stderr and its exit code (2 bad input, 1 build
or run failure), Ctrl-C (and SIGTERM) exit 130; the terminal prompts commands hand to builder/.

A group is a composed click decorator (`options(...)`); a group whose options make one value
(`artifact_options` -> ArtifactOptions) hands the command that value instead of the loose options.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from builder import console
from builder.errors import NeuralDriveError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuraldrive"
PATH = click.Path(path_type=Path)


class Commands(click.Group):
    """build.py's group: every command's NeuralDriveError becomes one line on stderr (its first line
    `error: ...` last, after any detail lines) and its exit code; Ctrl-C exits 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NeuralDriveError as exc:
            lines = str(exc).splitlines() or [exc.__class__.__name__]
            for extra in lines[1:]:
                click.echo(extra, err=True)
            click.echo(f"error: {lines[0]}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def sigterm_as_interrupt() -> None:
    """SIGTERM (CI timeouts, `kill`) unwinds like Ctrl-C: every VM and temp dir is cleaned up."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def terminal_confirm(question: str) -> None:
    click.confirm(question, abort=True, err=True)


def terminal_passphrase() -> bytes:
    return str(click.prompt("LUKS passphrase", hide_input=True, confirmation_prompt=True, err=True)).encode()


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Compose click options into one decorator, in the order given."""
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def profile_option(default: str | None, help: str) -> Callable[[F], F]:
    return click.option("--profile", "profile_name", default=default, show_default=default is not None, help=help)


def out_option(default: str = "out") -> Callable[[F], F]:
    return click.option("--out", "out_dir", type=PATH, default=Path(default), show_default=True,
                        help="Directory for the ISO and its companion files.")


CACHE = click.option("--cache-dir", type=PATH, default=DEFAULT_CACHE, show_default=True,
                     help="Artifact cache, live-build package/bootstrap cache and build dirs.")
OFFLINE = click.option("--offline", is_flag=True, help="Never download artifacts: use the cache or fail.")
VERBOSE = click.option("-v", "--verbose", is_flag=True, expose_value=False, help="Print more detail.",
                       callback=lambda ctx, param, value: console.set_verbose(value))
ACCEL = click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
                     help="auto uses KVM only if it really runs a guest.")
AUTHORIZED_KEYS = click.option("--authorized-keys", type=PATH,
                               help="SSH public keys for neuraldrive-admin (profile must enable SSH).")
COMMON = options(profile_option("default", "Profile name (config/profiles/NAME.yaml) or path to a YAML file."),
                 out_option(), CACHE, OFFLINE, VERBOSE)


def artifact_options(func: F) -> F:
    """--artifact-mirror, --ollama-archive, --ollama-sha256, --allow-unofficial-artifacts (with --offline)
    become one `artifacts: ArtifactOptions` argument."""
    @functools.wraps(func)
    def wrapper(*args: Any, artifact_mirror: str | None, ollama_archive: str | None, ollama_sha256: str | None,
                allow_unofficial_artifacts: bool, offline: bool, **kwargs: Any) -> Any:
        from builder.image.pipeline import ArtifactOptions

        kwargs["artifacts"] = ArtifactOptions(mirror=artifact_mirror, archive=ollama_archive,
                                              archive_sha256=ollama_sha256, allow_unofficial=allow_unofficial_artifacts,
                                              offline=offline)
        return func(*args, **kwargs)

    return options(
        click.option("--artifact-mirror", metavar="URL",
                     help="Base URL serving the release assets by file name (local or air-gapped mirror)."),
        click.option("--ollama-archive", metavar="PATH|URL", envvar="NEURALDRIVE_OLLAMA_ARCHIVE",
                     help="Use this ollama-linux-amd64.tar.zst instead of the pinned URL "
                          "(env NEURALDRIVE_OLLAMA_ARCHIVE). Verified against the pin unless --ollama-sha256."),
        click.option("--ollama-sha256", metavar="HEX",
                     help="sha256 of --ollama-archive when it is not the pinned release (makes it unofficial)."),
        click.option("--allow-unofficial-artifacts", is_flag=True,
                     help="Let a release profile use an archive that is not an official Ollama release asset."),
    )(wrapper)  # type: ignore[return-value]


# `test`'s options beyond profile/out/cache: its ProofRequest's fields.
TEST_RUN = options(
    click.option("--modes", default="bios-disk,uefi-cd", show_default=True,
                 help="Boot modes, comma-separated (bios|uefi)-(cd|disk): the first runs the full suite "
                      "(and the reboot/persistence checks), the others a smoke boot."),
    ACCEL,
    click.option("--offline", is_flag=True, help="Never download artifacts."),
    click.option("--no-cache", is_flag=True, help="Build the ISO cold (no package layer from the cache)."),
    click.option("--stick/--no-stick", default=True, show_default=True,
                 help="Also build release B (another version) and write stick images with `usb --image` (root): a "
                      "plain and a LUKS one, each booted as release A, upgraded in place to B (`usb --upgrade`) and "
                      "booted again with everything kept; and a stick whose power is cut during its first boot."),
    click.option("--ollama-archive", "real_archive", metavar="PATH", envvar="NEURALDRIVE_OLLAMA_ARCHIVE", type=PATH,
                 help="Run the same suite against this (real) ollama-linux-amd64.tar.zst instead of the test "
                      "double (env NEURALDRIVE_OLLAMA_ARCHIVE)."),
    click.option("-k", "select", metavar="EXPR",
                 help="Run only the full suite's tests that match this pytest -k expression, on both its boots "
                      "(smoke boots, sticks and power cuts run as given by --modes and --stick)."),
)


# `bench`'s options beyond profile/out: measure()'s arguments.
BENCH_RUN = options(
    click.option("--boot-runs", type=click.IntRange(min=1), default=3, show_default=True,
                 help="Boots per boot mode, of each image (the figures are medians)."),
    click.option("--modes", default="bios-disk,uefi-disk", show_default=True, help="Boot modes to time."),
    click.option("--no-reference", is_flag=True,
                 help="Do not build or boot the reference (a stock Debian live ISO from plain `lb config` defaults, "
                      "booted to its login prompt in each mode to compare with)."),
    click.option("--cache-dir", type=PATH, default=DEFAULT_CACHE, show_default=True,
                 help="Where the reference ISO is cached (built once); the bench's own builds use an empty cache."),
)


# `boot`'s machine: a BootSpec's fields.
BOOT_SPEC = options(
    click.option("--firmware", type=click.Choice(["bios", "uefi"]), default="bios", show_default=True),
    click.option("--media", type=click.Choice(["cd", "disk"]), default="cd", show_default=True,
                 help="cd: an optical drive; disk: a virtio disk, as a USB stick would be."),
    click.option("--persistence", "persistence_disk", type=PATH, help="Attach this qcow2 persistence disk "
                 "(created, ext4 labelled persistence, if it does not exist)."),
    click.option("--check", is_flag=True, help="Exit once the login prompt appears (boot test) instead of "
                 "running until Ctrl-C."),
)


# `usb`'s options (a UsbRequest's fields; --profile is added by the command).
USB_REQUEST = options(
    click.option("--device", help="Whole-disk block device to overwrite, e.g. /dev/sdb."),
    click.option("--image", type=PATH, help="Write a disk-image file instead."),
    click.option("--size", help="Size of a new --image file [default: 16G]."),
    click.option("--persistence-size", help="Persistence partition size: a percentage of the free space or e.g. "
                                            "32G [default: 100%]."),
    click.option("--system-size",
                 help="Room for the system (the ISO and later, larger releases) before the persistence partition "
                      "[default: twice the ISO, at least 4 GiB, in whole GiB]."),
    click.option("--authorized-keys", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                 help="OpenSSH public keys for neuraldrive-admin, put on the persistence partition: key-only SSH on "
                      "the device, whatever its profile."),
    click.option("--upgrade", is_flag=True,
                 help="Write a new release over an existing NeuralDrive stick's system region only; its "
                      "persistence partition (plain or LUKS) stays as it is."),
    click.option("--verify-persistence", is_flag=True,
                 help="With --upgrade: hash the whole persistence partition before and after (reads it twice)."),
    click.option("--encrypt", is_flag=True, help="LUKS2-encrypt the persistence partition."),
    click.option("--passphrase-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
                 help="Read the LUKS passphrase from this file instead of asking twice."),
    click.option("--models", "models_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
                 help="Ollama models dir (manifests/ + blobs/) to preload onto the persistence partition."),
)


# `release`'s signing and build choices.
RELEASE_SIGNING = options(
    click.option("--sign-key-env", default="NEURALDRIVE_SIGNING_KEY", show_default=True, metavar="VAR",
                 help="Environment variable holding the armored OpenPGP secret key that signs SHA256SUMS "
                      "(VAR_PASSPHRASE unlocks it, if set)."),
    click.option("--no-sign", is_flag=True, help="Write SHA256SUMS without a signature."),
    click.option("--skip-build", is_flag=True, help="Take the profiles' ISOs already in --out (built by `iso`)."),
    click.option("--boot-check/--no-boot-check", default=True, show_default=True,
                 help="Boot each new ISO in QEMU to its login prompt."),
)
