#!/usr/bin/env python3
"""NeuralDrive builder: turn a YAML profile into a bootable Debian live ISO, and prove it boots.

Thin CLI: parses options, calls the stages in builder/, maps their errors to exit codes
(2 bad input, 1 build or run failure) and one-line messages.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from builder import steps
from builder.errors import NeuralDriveError, OptionError, ProfileError
from builder.profile import Profile, load_profile

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuraldrive"


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


def common_options(func: F) -> F:
    options = [
        click.option("--profile", "profile_name", default="default", show_default=True,
                     help="Profile name (config/profiles/NAME.yaml) or path to a YAML file."),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
                     help="Directory for the ISO and its companion files."),
        click.option("--cache-dir", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True,
                     help="Artifact cache, live-build package/bootstrap cache and build dirs."),
        click.option("--offline", is_flag=True, help="Never download artifacts: use the cache or fail."),
        click.option("-v", "--verbose", is_flag=True, help="Print more detail."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def artifact_options(func: F) -> F:
    options = [
        click.option("--artifact-mirror", metavar="URL",
                     help="Base URL serving the release assets by file name (local or air-gapped mirror)."),
        click.option("--ollama-archive", metavar="PATH|URL", envvar="NEURALDRIVE_OLLAMA_ARCHIVE",
                     help="Use this ollama-linux-amd64.tar.zst instead of the pinned URL "
                          "(env NEURALDRIVE_OLLAMA_ARCHIVE). Verified against the pin unless --ollama-sha256."),
        click.option("--ollama-sha256", metavar="HEX",
                     help="sha256 of --ollama-archive when it is not the pinned release (makes it unofficial)."),
        click.option("--allow-unofficial-artifacts", is_flag=True,
                     help="Let a release profile use an archive that is not an official Ollama release asset."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _profile(name: str, authorized_keys: Path | None = None) -> Profile:
    profile = load_profile(name)
    if authorized_keys is not None:
        from dataclasses import replace

        if not profile.ssh.enabled:
            raise ProfileError(f"{profile.source}: ssh.enabled: --authorized-keys given but SSH is off")
        if not authorized_keys.is_file():
            raise ProfileError(f"--authorized-keys: {authorized_keys}: no such file")
        from builder.sshkeys import read_authorized_keys

        read_authorized_keys(authorized_keys)  # only public keys: errors name the file and line
        profile = replace(profile, ssh=replace(profile.ssh, authorized_keys=str(authorized_keys.resolve())))
    return profile


def _artifact_opts(offline: bool, mirror: str | None, archive: str | None, sha: str | None, allow: bool) -> Any:
    from builder.pipeline import ArtifactOptions

    return ArtifactOptions(mirror=mirror, archive=archive, archive_sha256=sha, allow_unofficial=allow, offline=offline)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build NeuralDrive live ISOs (Debian 13 + Ollama appliance) and test them in QEMU."""


@cli.command()
@common_options
@artifact_options
@click.option("--authorized-keys", type=click.Path(path_type=Path),
              help="SSH public keys for neuraldrive-admin (profile must enable SSH).")
@click.option("--no-cache", is_flag=True,
              help="Cold build: do not restore the cached package layer (a fresh one is saved).")
@handle_errors
def iso(profile_name: str, out_dir: Path, cache_dir: Path, offline: bool, verbose: bool, artifact_mirror: str | None,
        ollama_archive: str | None, ollama_sha256: str | None, allow_unofficial_artifacts: bool,
        authorized_keys: Path | None, no_cache: bool) -> None:
    """Build the bootable hybrid ISO for a profile (needs root)."""
    from builder.pipeline import build_iso

    steps.set_verbose(verbose)
    profile = _profile(profile_name, authorized_keys)
    options = _artifact_opts(offline, artifact_mirror, ollama_archive, ollama_sha256, allow_unofficial_artifacts)
    outputs = build_iso(profile, out_dir, cache_dir, options, use_cache=not no_cache)
    click.echo(str(outputs.iso))


@cli.command()
@common_options
@artifact_options
@click.option("--tree-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the live-build config dir [default: OUT/tree-PROFILE].")
@click.option("--authorized-keys", type=click.Path(path_type=Path),
              help="SSH public keys for neuraldrive-admin (profile must enable SSH).")
@click.option("--no-artifacts", is_flag=True, help="Render without fetching or staging the engine archive.")
@handle_errors
def tree(profile_name: str, out_dir: Path, cache_dir: Path, offline: bool, verbose: bool,
         artifact_mirror: str | None, ollama_archive: str | None, ollama_sha256: str | None,
         allow_unofficial_artifacts: bool, tree_dir: Path | None, authorized_keys: Path | None,
         no_artifacts: bool) -> None:
    """Render the live-build config dir only (no root needed)."""
    from builder.pipeline import artifacts_for, fetch_all
    from builder.render import render_tree

    steps.set_verbose(verbose)
    profile = _profile(profile_name, authorized_keys)
    options = _artifact_opts(offline, artifact_mirror, ollama_archive, ollama_sha256, allow_unofficial_artifacts)
    staged = [] if no_artifacts else fetch_all(artifacts_for(profile, options), cache_dir, offline)
    target = tree_dir or out_dir / f"tree-{profile.name}"
    _clear_tree_dir(target)
    target.mkdir(parents=True)
    (target / TREE_MARKER).write_text(TREE_MARKER_TEXT, encoding="utf-8")
    render_tree(profile, target, staged)
    click.echo(str(target))


TREE_MARKER = ".neuraldrive-tree"
TREE_MARKER_TEXT = "Rendered by `build.py tree`: the next `build.py tree` with this --tree-dir replaces it.\n"


def _clear_tree_dir(target: Path) -> None:
    """Remove a tree this command made (it holds the marker); refuse anything else."""
    if not os.path.lexists(target):
        return
    marker = target / TREE_MARKER
    ours = (not target.is_symlink() and target.is_dir() and marker.is_file() and not marker.is_symlink()
            and marker.read_text(encoding="utf-8", errors="replace") == TREE_MARKER_TEXT)
    if not ours:
        raise OptionError(f"--tree-dir: {target}: exists and was not made by `build.py tree` "
                          f"(no {TREE_MARKER}); remove it yourself or choose another directory")
    shutil.rmtree(target)


@cli.command()
@common_options
@artifact_options
@handle_errors
def fetch(profile_name: str, out_dir: Path, cache_dir: Path, offline: bool, verbose: bool,
          artifact_mirror: str | None, ollama_archive: str | None, ollama_sha256: str | None,
          allow_unofficial_artifacts: bool) -> None:
    """Download and verify the profile's artifacts into the cache only."""
    from builder.pipeline import artifacts_for, fetch_all

    steps.set_verbose(verbose)
    profile = _profile(profile_name)
    options = _artifact_opts(offline, artifact_mirror, ollama_archive, ollama_sha256, allow_unofficial_artifacts)
    for item in fetch_all(artifacts_for(profile, options), cache_dir, offline):
        click.echo(f"{item.artifact.sha256}  {item.path}")


@cli.command()
@click.argument("version")
@click.option("--sums", "sums_source", metavar="PATH|URL",
              help="Read sha256sum.txt from here instead of the release's URL.")
@click.option("--offline", is_flag=True, help="Never touch the network (needs --sums PATH).")
@handle_errors
def lock(version: str, sums_source: str | None, offline: bool) -> None:
    """Pin Ollama VERSION: record URLs and sha256 from the release's sha256sum.txt."""
    from builder import lock as lock_module
    from builder.errors import LockError
    from builder.lock import pin_release, release_sums_url
    from builder.pinning import read_sums

    source = sums_source or release_sums_url(version.lstrip("v"))
    if offline and source.startswith(("http://", "https://")):
        raise LockError(f"--offline: cannot download {source}; pass --sums PATH")
    files = pin_release(version.lstrip("v"), read_sums(source), source=source)
    for name, digest in files.items():
        click.echo(f"{digest or 'not published':<64}  {name}")
    click.echo(f"wrote {lock_module.LOCK_FILE}")


@cli.command()
@click.option("--cache-dir", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Also remove downloaded artifacts and package caches.")
@handle_errors
def clean(cache_dir: Path, everything: bool) -> None:
    """Remove build dirs (and with --all the whole cache)."""
    from builder.livebuild import remove_build_dir

    work = cache_dir / "work"
    if work.is_dir():
        for build_dir in work.iterdir():
            remove_build_dir(build_dir)
    if everything and cache_dir.is_dir():
        shutil.rmtree(cache_dir)
    click.echo(f"cleaned {cache_dir if everything else work}")


@cli.command("test")
@click.option("--iso", "iso_path", type=click.Path(path_type=Path),
              help="Test this ISO (built earlier by `build.py test`) instead of building one.")
@click.option("--profile", "profile_name", default="test", show_default=True, help="Profile to build and test.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True)
@click.option("--modes", default="bios-disk,uefi-cd", show_default=True,
              help="Boot modes, comma-separated (bios|uefi)-(cd|disk): the first runs the full suite "
                   "(and the reboot/persistence checks), the others a smoke boot.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="auto uses KVM only if it really runs a guest.")
@click.option("--offline", is_flag=True, help="Never download artifacts.")
@click.option("--no-cache", is_flag=True, help="Build the ISO cold (no package layer from the cache).")
@click.option("--stick/--no-stick", default=True, show_default=True,
              help="Also write stick images with `usb --image` and boot them as disks (root): a plain one "
                   "BIOS then UEFI (persistence across the reboot), and a LUKS one unlocked on the serial "
                   "console through the ISO's \"encrypted persistence\" menu entry.")
@click.option("--ollama-archive", "real_archive", metavar="PATH", envvar="NEURALDRIVE_OLLAMA_ARCHIVE",
              type=click.Path(path_type=Path),
              help="Run the same suite against this (real) ollama-linux-amd64.tar.zst instead of the test "
                   "double (env NEURALDRIVE_OLLAMA_ARCHIVE).")
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def test_cmd(iso_path: Path | None, profile_name: str, out_dir: Path, cache_dir: Path, modes: str, accel: str,
             offline: bool, no_cache: bool, stick: bool, real_archive: Path | None, verbose: bool) -> None:
    """Boot a test ISO in QEMU and check it with testinfra (tests/image).

    Without --iso, builds the profile's ISO first (needs root) with a per-run SSH key and the
    Ollama-API test double served from 127.0.0.1. With --ollama-archive /path/to/
    ollama-linux-amd64.tar.zst the same suite runs against that (real) archive instead.
    """
    import tempfile

    from builder.artifacts import sha256_file
    from builder.errors import VMError
    from builder.imagetest import key_for_iso, run_image_tests, serve_files, test_double_archive
    from builder.pipeline import ArtifactOptions, build_iso
    from builder.vm import FIRMWARES, MEDIA

    steps.set_verbose(verbose)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    for mode in mode_list:
        firmware, _, media = mode.partition("-")
        if firmware not in FIRMWARES or media not in MEDIA:
            raise ProfileError(f"--modes: {mode!r} is not (bios|uefi)-(cd|disk)")
    profile = load_profile(profile_name)
    with tempfile.TemporaryDirectory(prefix="neuraldrive-run-") as tmp:
        archive = real_archive.resolve() if real_archive else test_double_archive(Path(tmp) / "double")
        if real_archive and not archive.is_file():
            raise ProfileError(f"--ollama-archive: {real_archive}: no such file")
        if iso_path is None:
            from builder.guest import generate_key

            key = generate_key(Path(tmp))
            profile = _profile(str(profile.source), Path(f"{key}.pub"))
            with serve_files({archive.name: archive}) as url:
                if real_archive:
                    options = ArtifactOptions(archive=str(archive), archive_sha256=sha256_file(archive),
                                              offline=offline)
                else:
                    options = ArtifactOptions(mirror=url, offline=offline)
                outputs = build_iso(profile, out_dir, cache_dir, options, use_cache=not no_cache)
            iso = outputs.iso
            shutil.copyfile(key, key_for_iso(iso))
            key_for_iso(iso).chmod(0o600)
        else:
            iso = iso_path
            if not key_for_iso(iso).is_file():
                raise VMError(f"{iso}: no {key_for_iso(iso).name} beside it: test only ISOs built by `build.py test`")
        summary = run_image_tests(profile, iso, key_for_iso(iso), archive, mode_list, out_dir, accel, stick)
    sys.exit(0 if summary.ok else 1)


@cli.command()
@click.option("--profile", "profile_name", default="test", show_default=True, help="Profile to measure.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/bench"), show_default=True)
@click.option("--boot-runs", default=2, show_default=True, help="Boots per boot mode.")
@click.option("--modes", default="bios-disk,uefi-disk", show_default=True, help="Boot modes to time.")
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def bench(profile_name: str, out_dir: Path, boot_runs: int, modes: str, verbose: bool) -> None:
    """Measure cold and warm builds and boot-to-ready times; print a table and write bench.json.

    Uses its own empty cache for the cold build (downloads everything once) and the Ollama-API
    test double (or NEURALDRIVE_OLLAMA_ARCHIVE): bench images are measured, never shipped.
    """
    import tempfile

    from builder.artifacts import sha256_file
    from builder.bench import run_bench
    from builder.guest import generate_key
    from builder.imagetest import serve_files, test_double_archive
    from builder.pipeline import ArtifactOptions

    steps.set_verbose(verbose)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    profile = load_profile(profile_name)
    with tempfile.TemporaryDirectory(prefix="neuraldrive-bench-run-") as tmp:
        real_archive = os.environ.get("NEURALDRIVE_OLLAMA_ARCHIVE")
        archive = Path(real_archive) if real_archive else test_double_archive(Path(tmp) / "double")
        key = None
        if profile.ssh.enabled:
            key = generate_key(Path(tmp))
            profile = _profile(profile.source, Path(f"{key}.pub"))
        with serve_files({archive.name: archive}) as url:
            options = ArtifactOptions(archive=str(archive) if real_archive else f"{url}{archive.name}",
                                      archive_sha256=sha256_file(archive), allow_unofficial=True)
            run_bench(profile, options, out_dir, boot_runs, key, mode_list)


@cli.command()
@click.option("--iso", "iso_path", type=click.Path(path_type=Path), required=True, help="The ISO to boot.")
@click.option("--firmware", type=click.Choice(["bios", "uefi"]), default="bios", show_default=True)
@click.option("--media", type=click.Choice(["cd", "disk"]), default="cd", show_default=True,
              help="cd: an optical drive; disk: a virtio disk, as a USB stick would be.")
@click.option("--persistence", type=click.Path(path_type=Path), help="Attach this qcow2 persistence disk "
              "(created, ext4 labelled persistence, if it does not exist).")
@click.option("--check", is_flag=True, help="Exit once the login prompt appears (boot test) instead of "
              "running until Ctrl-C.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True)
@click.option("--timeout", default=600, show_default=True, help="Seconds to wait for the login prompt.")
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def boot(iso_path: Path, firmware: str, media: str, persistence: Path | None, check: bool, accel: str,
         timeout: int, verbose: bool) -> None:
    """Boot an ISO in QEMU (TCG unless KVM works) with SSH and gateway forwarded to 127.0.0.1."""
    import tempfile
    import time

    from builder.vm import VM, BootSpec, make_persistence_disk

    steps.set_verbose(verbose)
    with tempfile.TemporaryDirectory(prefix="neuraldrive-boot-") as tmp:
        if persistence is not None and not persistence.exists():
            make_persistence_disk(persistence)
        vm = VM(BootSpec(iso=iso_path, firmware=firmware, media=media, persistence_disk=persistence, accel=accel),
                Path(tmp))
        try:
            vm.start()
            click.echo(f"{vm.qemu.description}, {vm.accel}, pid {vm.proc.pid if vm.proc else '?'}; "
                       f"serial log {vm.serial_log}; "
                       f"ssh -p {vm.forwards.ssh} neuraldrive-admin@127.0.0.1; gateway https://127.0.0.1:"
                       f"{vm.forwards.gateway}/", err=True)
            seconds = vm.wait_for_serial("login:", timeout)
            click.echo(f"login prompt after {seconds:.0f}s ({firmware}, {media}, {vm.accel})")
            if not check:
                click.echo("running; Ctrl-C stops the VM", err=True)
                while vm.alive():
                    time.sleep(1)
        finally:
            vm.stop()


@cli.command()
@click.option("--iso", "iso_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The hybrid ISO to write.")
@click.option("--device", help="Whole-disk block device to overwrite, e.g. /dev/sdb.")
@click.option("--image", "image_path", type=click.Path(path_type=Path), help="Write a disk-image file instead.")
@click.option("--size", default="16G", show_default=True, help="Size of the --image file.")
@click.option("--persistence-size", default="100%", show_default=True,
              help="Persistence partition size: a percentage of the free space or e.g. 32G.")
@click.option("--encrypt", is_flag=True, help="LUKS2-encrypt the persistence partition.")
@click.option("--passphrase-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Read the LUKS passphrase from this file instead of asking twice.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Ollama models dir (manifests/ + blobs/) to preload onto the persistence partition.")
@click.option("--profile", "profile_name", default=None,
              help="Preload the models the profile's `preload` names from its store (instead of --models).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def usb(iso_path: Path, device: str | None, image_path: Path | None, size: str, persistence_size: str,
        encrypt: bool, passphrase_file: Path | None, models_dir: Path | None, profile_name: str | None,
        yes: bool) -> None:
    """Write an ISO to a USB stick (or --image file) and add the persistence partition after it."""
    from builder.usb_command import UsbRequest, run_usb

    preload: tuple[Path, tuple[str, ...]] | None = None
    if profile_name is not None:
        from builder.profile_checks import preload_store_path

        profile = load_profile(profile_name)
        store = preload_store_path(profile)
        if profile.preload.models and store is not None:
            preload = (store, profile.preload.models)
    request = UsbRequest(iso=iso_path, device=device, image=image_path, size=size, persistence_size=persistence_size,
                         encrypt=encrypt, passphrase_file=passphrase_file, models_dir=models_dir, preload=preload,
                         yes=yes)
    report = run_usb(request, confirm=lambda question: click.confirm(question, abort=True, err=True),
                     ask_passphrase=lambda: click.prompt("LUKS passphrase", hide_input=True, confirmation_prompt=True,
                                                         err=True).encode(),
                     interactive=sys.stdin.isatty())
    plan = report.partition
    click.echo(f"wrote {report.target}: {report.written_bytes >> 20} MiB at {report.write_rate / 2**20:.0f} MiB/s, "
               f"verified in {report.verify_seconds:.1f}s; persistence {plan.size >> 20 if plan else 0} MiB"
               f"{' (LUKS2)' if report.encrypted else ''}; models: {len(report.models)}")


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (CI timeouts, `kill`) unwinds like Ctrl-C: every VM and temp dir is cleaned up.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli()


if __name__ == "__main__":
    main()
