#!/usr/bin/env python3
"""NeuralDrive builder: turn a YAML profile into a bootable Debian live ISO, and prove it boots.

Thin CLI: each command parses its options and calls one function of builder/; the option groups the
commands share and the error mapping (exit 2 bad input, 1 build or run failure, one-line messages)
live in builder/cli.py. Where a command's options make one request (test, bench, boot, usb, release), they
reach it as `**request`: a new option is a click option in that command's group in builder/cli.py
(TEST_RUN, BENCH_RUN, BOOT_SPEC, USB_REQUEST, RELEASE_SIGNING) and a field (parameter) of what it reaches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from builder import cli as shared
from builder.profile import load_profile

if TYPE_CHECKING:
    from builder.image.pipeline import ArtifactOptions


@click.group(cls=shared.Commands, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build NeuralDrive live ISOs (Debian 13 + Ollama appliance) and test them in QEMU."""


@cli.command()
@shared.COMMON
@shared.artifact_options
@shared.AUTHORIZED_KEYS
@click.option("--no-cache", is_flag=True,
              help="Cold build: do not restore the cached package layer (a fresh one is saved).")
def iso(profile_name: str, out_dir: Path, cache_dir: Path, artifacts: ArtifactOptions, authorized_keys: Path | None,
        no_cache: bool) -> None:
    """Build the bootable hybrid ISO for a profile (needs root)."""
    from builder.image.pipeline import build_iso

    profile = load_profile(profile_name, authorized_keys)
    click.echo(str(build_iso(profile, out_dir, cache_dir, artifacts, use_cache=not no_cache).iso))


@cli.command()
@shared.COMMON
@shared.artifact_options
@click.option("--tree-dir", type=shared.PATH, default=None,
              help="Where to write the live-build config dir [default: OUT/tree-PROFILE].")
@shared.AUTHORIZED_KEYS
@click.option("--no-artifacts", is_flag=True, help="Render without fetching or staging the engine archive.")
def tree(profile_name: str, out_dir: Path, cache_dir: Path, artifacts: ArtifactOptions, tree_dir: Path | None,
         authorized_keys: Path | None, no_artifacts: bool) -> None:
    """Render the live-build config dir only (no root needed)."""
    from builder.image.pipeline import write_tree

    profile = load_profile(profile_name, authorized_keys)
    click.echo(str(write_tree(profile, tree_dir, out_dir, cache_dir, artifacts, with_artifacts=not no_artifacts)))


@cli.command()
@shared.COMMON
@shared.artifact_options
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
def lock(version: str, sums_source: str | None, offline: bool) -> None:
    """Pin Ollama VERSION: record URLs and sha256 from the release's sha256sum.txt."""
    from builder.artifacts.lock import LOCK_FILE
    from builder.artifacts.pinning import pin_version

    for name, digest in pin_version(version, sums_source, offline).items():
        click.echo(f"{digest or 'not published':<64}  {name}")
    click.echo(f"wrote {LOCK_FILE}")


@cli.command()
@shared.CACHE
@click.option("--all", "everything", is_flag=True, help="Also remove downloaded artifacts and package caches.")
def clean(cache_dir: Path, everything: bool) -> None:
    """Remove build dirs (and with --all the whole cache)."""
    from builder.image.pipeline import clean_cache

    click.echo(f"cleaned {clean_cache(cache_dir, everything)}")


@cli.command("test")
@click.option("--iso", type=shared.PATH,
              help="Test this ISO (built earlier by `build.py test`) instead of building one.")
@shared.options(shared.profile_option("test", "Profile to build and test."), shared.out_option(), shared.CACHE)
@shared.TEST_RUN
@shared.VERBOSE
def test_cmd(no_cache: bool, **request: Any) -> None:
    """Boot a test ISO in QEMU and check it with testinfra (tests/image).

    Without --iso, builds the profile's ISO first (needs root) with a per-run SSH key and the
    Ollama-API test double served from 127.0.0.1. With --ollama-archive /path/to/
    ollama-linux-amd64.tar.zst the same suite runs against that (real) archive instead.
    """
    from builder.proof.session import ProofRequest, prove_image

    sys.exit(0 if prove_image(ProofRequest(use_cache=not no_cache, **request)).ok else 1)


@cli.command()
@shared.options(shared.profile_option("test", "Profile to measure."), shared.out_option("out/bench"))
@shared.BENCH_RUN
@shared.VERBOSE
def bench(**request: Any) -> None:
    """Measure cold and warm builds and first boots to the gateway, beside a stock Debian live reference
    booted to its login prompt in the same run; print a table and write bench.json.

    Uses its own empty cache for the builds and the Ollama-API test double (or
    NEURALDRIVE_OLLAMA_ARCHIVE): bench images are measured, never shipped.
    """
    from builder.proof.session import measure

    measure(**request)


@cli.command()
@click.option("--iso", type=shared.PATH, required=True, help="The ISO to boot.")
@shared.BOOT_SPEC
@shared.ACCEL
@click.option("--timeout", default=600, show_default=True, help="Seconds to wait for the login prompt.")
@shared.VERBOSE
def boot(check: bool, timeout: int, **spec: Any) -> None:
    """Boot an ISO in QEMU (TCG unless KVM works) with SSH and gateway forwarded to 127.0.0.1."""
    from builder.vm.boot import boot_iso
    from builder.vm.machine import BootSpec

    boot_iso(BootSpec(**spec), check, timeout)


@cli.command()
@click.option("--iso", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The hybrid ISO to write.")
@shared.USB_REQUEST
@shared.profile_option(None, "Preload the models the profile's `preload` names from its store (instead of --models).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def usb(profile_name: str | None, **request: Any) -> None:
    """Write an ISO to a USB stick (or --image file) and add the persistence partition after it; or, with
    --upgrade, write a new release over a stick's system region and keep its persistence partition."""
    from builder.usb.command import UsbRequest, profile_preload, run_usb

    usb_request = UsbRequest(preload=profile_preload(profile_name), **request)
    click.echo(run_usb(usb_request, shared.terminal_confirm, shared.terminal_passphrase,
                       interactive=sys.stdin.isatty()).summary())


@cli.command()
@click.option("--profiles", default="default,cpu,nvidia,amd,intel", show_default=True,
              help="Profiles of the release, comma-separated.")
@shared.options(shared.out_option("out/release"), shared.CACHE, shared.OFFLINE, shared.VERBOSE)
@shared.artifact_options
@shared.RELEASE_SIGNING
@shared.ACCEL
@click.option("--test-double", is_flag=True,
              help="Build with the Ollama-API test double instead of the pinned engine (images marked unofficial).")
def release(profiles: str, sign_key_env: str, no_sign: bool, skip_build: bool, **request: Any) -> None:
    """Build, boot-check and publish a release: per profile the ISO, .sha256, .packages, build-info.json
    and a CycloneDX SBOM, then SHA256SUMS over them all and its detached signature (SHA256SUMS.asc)."""
    from builder.release.release import ReleaseRequest, parse_profiles, run_release

    click.echo(run_release(ReleaseRequest(profiles=parse_profiles(profiles), build=not skip_build,
                                          sign_key_env=None if no_sign else sign_key_env, **request)).summary())


@cli.command()
@click.argument("iso_path", metavar="ISO", type=shared.PATH)
@click.option("--sums", type=shared.PATH, help="The release's SHA256SUMS [default: beside the ISO].")
@click.option("--signature", type=shared.PATH, help="Its detached signature [default: SUMS.asc].")
@click.option("--keyring", type=shared.PATH, envvar="NEURALDRIVE_RELEASE_KEYRING",
              help="The release's OpenPGP public key(s), armored or binary (env NEURALDRIVE_RELEASE_KEYRING).")
def verify(iso_path: Path, sums: Path | None, signature: Path | None, keyring: Path | None) -> None:
    """Check a downloaded ISO: SHA256SUMS's signature against --keyring, then the ISO against SHA256SUMS."""
    from builder.release.verify import verify_iso

    click.echo(verify_iso(iso_path, sums, keyring, signature).summary())


def main() -> None:
    shared.sigterm_as_interrupt()
    cli()


if __name__ == "__main__":
    main()
