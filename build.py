#!/usr/bin/env python3
"""NeuralDrive builder: turn a YAML profile into a bootable Debian live ISO, and prove it boots.

Thin CLI: each command parses its options and calls one function of builder/; errors become exit
codes (2 bad input, 1 build or run failure) and one-line messages.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from builder import console
from builder.errors import NeuralDriveError
from builder.profile import load_profile

if TYPE_CHECKING:
    from builder.image.pipeline import ArtifactOptions

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuraldrive"
PATH = click.Path(path_type=Path)


def handle_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NeuralDriveError as exc:
            lines = str(exc).splitlines() or [exc.__class__.__name__]
            for extra in lines[1:]:
                click.echo(extra, err=True)
            click.echo(f"error: {lines[0]}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


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
common_options = options(profile_option("default", "Profile name (config/profiles/NAME.yaml) or path to a YAML file."),
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build NeuralDrive live ISOs (Debian 13 + Ollama appliance) and test them in QEMU."""


@cli.command()
@common_options
@artifact_options
@AUTHORIZED_KEYS
@click.option("--no-cache", is_flag=True,
              help="Cold build: do not restore the cached package layer (a fresh one is saved).")
@handle_errors
def iso(profile_name: str, out_dir: Path, cache_dir: Path, artifacts: ArtifactOptions, authorized_keys: Path | None,
        no_cache: bool) -> None:
    """Build the bootable hybrid ISO for a profile (needs root)."""
    from builder.image.pipeline import build_iso

    profile = load_profile(profile_name, authorized_keys)
    click.echo(str(build_iso(profile, out_dir, cache_dir, artifacts, use_cache=not no_cache).iso))


@cli.command()
@common_options
@artifact_options
@click.option("--tree-dir", type=PATH, default=None,
              help="Where to write the live-build config dir [default: OUT/tree-PROFILE].")
@AUTHORIZED_KEYS
@click.option("--no-artifacts", is_flag=True, help="Render without fetching or staging the engine archive.")
@handle_errors
def tree(profile_name: str, out_dir: Path, cache_dir: Path, artifacts: ArtifactOptions, tree_dir: Path | None,
         authorized_keys: Path | None, no_artifacts: bool) -> None:
    """Render the live-build config dir only (no root needed)."""
    from builder.image.pipeline import write_tree

    profile = load_profile(profile_name, authorized_keys)
    click.echo(str(write_tree(profile, tree_dir, out_dir, cache_dir, artifacts, with_artifacts=not no_artifacts)))


@cli.command()
@common_options
@artifact_options
@handle_errors
def fetch(profile_name: str, out_dir: Path, cache_dir: Path, artifacts: ArtifactOptions) -> None:
    """Download and verify the profile's artifacts into the cache only."""
    from builder.image.pipeline import fetch_for

    for item in fetch_for(load_profile(profile_name), artifacts, cache_dir):
        click.echo(f"{item.artifact.sha256}  {item.path}")


@cli.command()
@click.argument("version")
@click.option("--sums", "sums_source", metavar="PATH|URL",
              help="Read sha256sum.txt from here instead of the release's URL.")
@click.option("--offline", is_flag=True, help="Never touch the network (needs --sums PATH).")
@handle_errors
def lock(version: str, sums_source: str | None, offline: bool) -> None:
    """Pin Ollama VERSION: record URLs and sha256 from the release's sha256sum.txt."""
    from builder.artifacts.lock import LOCK_FILE
    from builder.artifacts.pinning import pin_version

    for name, digest in pin_version(version, sums_source, offline).items():
        click.echo(f"{digest or 'not published':<64}  {name}")
    click.echo(f"wrote {LOCK_FILE}")


@cli.command()
@CACHE
@click.option("--all", "everything", is_flag=True, help="Also remove downloaded artifacts and package caches.")
@handle_errors
def clean(cache_dir: Path, everything: bool) -> None:
    """Remove build dirs (and with --all the whole cache)."""
    from builder.image.pipeline import clean_cache

    click.echo(f"cleaned {clean_cache(cache_dir, everything)}")


@cli.command("test")
@click.option("--iso", "iso_path", type=PATH,
              help="Test this ISO (built earlier by `build.py test`) instead of building one.")
@options(profile_option("test", "Profile to build and test."), out_option(), CACHE)
@click.option("--modes", default="bios-disk,uefi-cd", show_default=True,
              help="Boot modes, comma-separated (bios|uefi)-(cd|disk): the first runs the full suite "
                   "(and the reboot/persistence checks), the others a smoke boot.")
@ACCEL
@click.option("--offline", is_flag=True, help="Never download artifacts.")
@click.option("--no-cache", is_flag=True, help="Build the ISO cold (no package layer from the cache).")
@click.option("--stick/--no-stick", default=True, show_default=True,
              help="Also write stick images with `usb --image` and boot them as disks (root): a plain one "
                   "BIOS then UEFI (persistence across the reboot), and a LUKS one unlocked on the serial "
                   "console through the ISO's \"encrypted persistence\" menu entry.")
@click.option("--ollama-archive", "real_archive", metavar="PATH", envvar="NEURALDRIVE_OLLAMA_ARCHIVE", type=PATH,
              help="Run the same suite against this (real) ollama-linux-amd64.tar.zst instead of the test "
                   "double (env NEURALDRIVE_OLLAMA_ARCHIVE).")
@VERBOSE
@handle_errors
def test_cmd(iso_path: Path | None, profile_name: str, out_dir: Path, cache_dir: Path, modes: str, accel: str,
             offline: bool, no_cache: bool, stick: bool, real_archive: Path | None) -> None:
    """Boot a test ISO in QEMU and check it with testinfra (tests/image).

    Without --iso, builds the profile's ISO first (needs root) with a per-run SSH key and the
    Ollama-API test double served from 127.0.0.1. With --ollama-archive /path/to/
    ollama-linux-amd64.tar.zst the same suite runs against that (real) archive instead.
    """
    from builder.proof.session import prove_image

    summary = prove_image(profile_name, iso_path, out_dir, cache_dir, modes, accel, offline, not no_cache, stick,
                          real_archive)
    sys.exit(0 if summary.ok else 1)


@cli.command()
@options(profile_option("test", "Profile to measure."), out_option("out/bench"))
@click.option("--boot-runs", default=2, show_default=True, help="Boots per boot mode.")
@click.option("--modes", default="bios-disk,uefi-disk", show_default=True, help="Boot modes to time.")
@VERBOSE
@handle_errors
def bench(profile_name: str, out_dir: Path, boot_runs: int, modes: str) -> None:
    """Measure cold and warm builds and boot-to-ready times; print a table and write bench.json.

    Uses its own empty cache for the cold build (downloads everything once) and the Ollama-API
    test double (or NEURALDRIVE_OLLAMA_ARCHIVE): bench images are measured, never shipped.
    """
    from builder.proof.session import measure

    real_archive = os.environ.get("NEURALDRIVE_OLLAMA_ARCHIVE")
    measure(profile_name, out_dir, boot_runs, modes, Path(real_archive) if real_archive else None)


@cli.command()
@click.option("--iso", "iso_path", type=PATH, required=True, help="The ISO to boot.")
@click.option("--firmware", type=click.Choice(["bios", "uefi"]), default="bios", show_default=True)
@click.option("--media", type=click.Choice(["cd", "disk"]), default="cd", show_default=True,
              help="cd: an optical drive; disk: a virtio disk, as a USB stick would be.")
@click.option("--persistence", type=PATH, help="Attach this qcow2 persistence disk "
              "(created, ext4 labelled persistence, if it does not exist).")
@click.option("--check", is_flag=True, help="Exit once the login prompt appears (boot test) instead of "
              "running until Ctrl-C.")
@ACCEL
@click.option("--timeout", default=600, show_default=True, help="Seconds to wait for the login prompt.")
@VERBOSE
@handle_errors
def boot(iso_path: Path, firmware: str, media: str, persistence: Path | None, check: bool, accel: str,
         timeout: int) -> None:
    """Boot an ISO in QEMU (TCG unless KVM works) with SSH and gateway forwarded to 127.0.0.1."""
    from builder.vm.boot import boot_iso
    from builder.vm.machine import BootSpec

    boot_iso(BootSpec(iso=iso_path, firmware=firmware, media=media, persistence_disk=persistence, accel=accel),
             check, timeout)


@cli.command()
@click.option("--iso", "iso_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The hybrid ISO to write.")
@click.option("--device", help="Whole-disk block device to overwrite, e.g. /dev/sdb.")
@click.option("--image", "image_path", type=PATH, help="Write a disk-image file instead.")
@click.option("--size", default="16G", show_default=True, help="Size of the --image file.")
@click.option("--persistence-size", default="100%", show_default=True,
              help="Persistence partition size: a percentage of the free space or e.g. 32G.")
@click.option("--encrypt", is_flag=True, help="LUKS2-encrypt the persistence partition.")
@click.option("--passphrase-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Read the LUKS passphrase from this file instead of asking twice.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Ollama models dir (manifests/ + blobs/) to preload onto the persistence partition.")
@profile_option(None, "Preload the models the profile's `preload` names from its store (instead of --models).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def usb(iso_path: Path, device: str | None, image_path: Path | None, size: str, persistence_size: str,
        encrypt: bool, passphrase_file: Path | None, models_dir: Path | None, profile_name: str | None,
        yes: bool) -> None:
    """Write an ISO to a USB stick (or --image file) and add the persistence partition after it."""
    from builder.usb.command import UsbRequest, profile_preload, run_usb

    request = UsbRequest(iso=iso_path, device=device, image=image_path, size=size, persistence_size=persistence_size,
                         encrypt=encrypt, passphrase_file=passphrase_file, models_dir=models_dir,
                         preload=profile_preload(profile_name), yes=yes)
    report = run_usb(request, confirm=lambda question: click.confirm(question, abort=True, err=True),
                     ask_passphrase=lambda: click.prompt("LUKS passphrase", hide_input=True, confirmation_prompt=True,
                                                         err=True).encode(),
                     interactive=sys.stdin.isatty())
    click.echo(report.summary())


@cli.command()
@click.option("--profiles", default="default,cpu,nvidia,amd,intel", show_default=True,
              help="Profiles of the release, comma-separated.")
@options(out_option("out/release"), CACHE, OFFLINE, VERBOSE)
@artifact_options
@click.option("--sign-key-env", default="NEURALDRIVE_SIGNING_KEY", show_default=True, metavar="VAR",
              help="Environment variable holding the armored OpenPGP secret key that signs SHA256SUMS "
                   "(VAR_PASSPHRASE unlocks it, if set).")
@click.option("--no-sign", is_flag=True, help="Write SHA256SUMS without a signature.")
@click.option("--skip-build", is_flag=True, help="Take the profiles' ISOs already in --out (built by `iso`).")
@click.option("--boot-check/--no-boot-check", default=True, show_default=True,
              help="Boot each new ISO in QEMU to its login prompt.")
@ACCEL
@click.option("--test-double", is_flag=True,
              help="Build with the Ollama-API test double instead of the pinned engine (images marked unofficial).")
@handle_errors
def release(profiles: str, out_dir: Path, cache_dir: Path, artifacts: ArtifactOptions, sign_key_env: str,
            no_sign: bool, skip_build: bool, boot_check: bool, accel: str, test_double: bool) -> None:
    """Build, boot-check and publish a release: per profile the ISO, .sha256, .packages, build-info.json
    and a CycloneDX SBOM, then SHA256SUMS over them all and its detached signature (SHA256SUMS.asc)."""
    from builder.release.release import ReleaseRequest, parse_profiles, run_release

    request = ReleaseRequest(profiles=parse_profiles(profiles), out_dir=out_dir, cache_dir=cache_dir,
                             artifacts=artifacts, build=not skip_build, boot_check=boot_check, accel=accel,
                             sign_key_env=None if no_sign else sign_key_env, test_double=test_double)
    click.echo(run_release(request).summary())


@cli.command()
@click.argument("iso_path", metavar="ISO", type=PATH)
@click.option("--sums", type=PATH, help="The release's SHA256SUMS [default: beside the ISO].")
@click.option("--signature", type=PATH, help="Its detached signature [default: SUMS.asc].")
@click.option("--keyring", type=PATH, envvar="NEURALDRIVE_RELEASE_KEYRING",
              help="The release's OpenPGP public key(s), armored or binary (env NEURALDRIVE_RELEASE_KEYRING).")
@handle_errors
def verify(iso_path: Path, sums: Path | None, signature: Path | None, keyring: Path | None) -> None:
    """Check a downloaded ISO: SHA256SUMS's signature against --keyring, then the ISO against SHA256SUMS."""
    from builder.release.verify import verify_iso

    click.echo(verify_iso(iso_path, sums, keyring, signature).summary())


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (CI timeouts, `kill`) unwinds like Ctrl-C: every VM and temp dir is cleaned up.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli()


if __name__ == "__main__":
    main()
