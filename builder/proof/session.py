"""One test run's context, shared by `build.py test` and `build.py bench`: the engine archive (the
Ollama-API test double, built here, or a real archive), served from 127.0.0.1 for the build's fetch,
and a per-run SSH key authorised in the profile. Proof images are measured or tested, never shipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.errors import ProfileError, VMError
from builder.files import sha256_file
from builder.image.pipeline import ArtifactOptions, build_iso
from builder.profile import Profile, load_profile
from builder.profile.load import with_authorized_keys
from builder.proof.bench import run_bench
from builder.proof.imagetest import run_image_tests
from builder.proof.ollama_double.package import build_archive
from builder.proof.server import serve_files
from builder.proof.summary import Summary
from builder.proof.upgrade import release_b, release_b_iso
from builder.vm.guest import generate_key
from builder.vm.machine import FIRMWARES, MEDIA

REAL_ARCHIVE_ENV = "NEURALDRIVE_OLLAMA_ARCHIVE"  # a real archive instead of the test double


@dataclass(frozen=True)
class TestRun:
    profile: Profile  # with the run's public key authorised, when the run has a key
    archive: Path
    real: bool  # a real Ollama archive, not the test double
    url: str  # where `archive` is served: {url}{archive.name}
    key: Path | None  # the run's private SSH key

    def build_options(self, offline: bool) -> ArtifactOptions:
        """`test`: a real archive by path (its own sha256); the double through the mirror, pinned by the profile."""
        if self.real:
            return ArtifactOptions(archive=str(self.archive), archive_sha256=sha256_file(self.archive), offline=offline)
        return ArtifactOptions(mirror=self.url, offline=offline)

    def bench_options(self) -> ArtifactOptions:
        """`bench`: the archive by its own sha256, whatever the profile pins (bench images are never shipped)."""
        archive = str(self.archive) if self.real else f"{self.url}{self.archive.name}"
        return ArtifactOptions(archive=archive, archive_sha256=sha256_file(self.archive), allow_unofficial=True)


@contextmanager
def test_run(profile: Profile, real_archive: Path | None, with_key: bool, prefix: str) -> Iterator[TestRun]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        archive = real_archive.resolve() if real_archive else build_archive(Path(tmp) / "double")
        if real_archive and not archive.is_file():
            raise ProfileError(f"--ollama-archive: {real_archive}: no such file")
        key = None
        if with_key:
            key = generate_key(Path(tmp))
            profile = with_authorized_keys(profile, Path(f"{key}.pub"))
        with serve_files({archive.name: archive}) as url:
            yield TestRun(profile=profile, archive=archive, real=real_archive is not None, url=url, key=key)


def parse_modes(modes: str) -> list[str]:
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    for mode in mode_list:
        firmware, _, media = mode.partition("-")
        if firmware not in FIRMWARES or media not in MEDIA:
            raise ProfileError(f"--modes: {mode!r} is not (bios|uefi)-(cd|disk)")
    return mode_list


def key_for_iso(iso: Path) -> Path:
    return iso.with_name(iso.name + ".ssh-key")


@dataclass(frozen=True)
class ProofRequest:
    """`build.py test`'s options."""

    iso: Path | None  # None: build the profile's test ISO first
    profile_name: str
    out_dir: Path
    cache_dir: Path
    modes: str
    accel: str
    offline: bool
    use_cache: bool
    stick: bool
    real_archive: Path | None
    select: str | None = None  # pytest -k expression for the main boot's image suite


def prove_image(request: ProofRequest) -> Summary:
    """`build.py test`: build the profile's test ISO (unless `request.iso`) and run the image tests on it."""
    mode_list = parse_modes(request.modes)
    iso = request.iso
    with test_run(load_profile(request.profile_name), request.real_archive, with_key=iso is None,
                  prefix="neuraldrive-run-") as run:
        if iso is None:
            assert run.key is not None
            iso = build_iso(run.profile, request.out_dir, request.cache_dir, run.build_options(request.offline),
                            use_cache=request.use_cache).iso
            shutil.copyfile(run.key, key_for_iso(iso))
            key_for_iso(iso).chmod(0o600)
            if request.stick:
                # Release B for the upgrade proof: another version, from A's package layer (warm).
                build_iso(release_b(run.profile), request.out_dir, request.cache_dir,
                          run.build_options(request.offline), use_cache=True)
        elif not key_for_iso(iso).is_file():
            raise VMError(f"{iso}: no {key_for_iso(iso).name} beside it: test only ISOs built by `build.py test`")
        iso_b = release_b_iso(iso, run.profile)
        return run_image_tests(run.profile, iso, key_for_iso(iso), run.archive, mode_list, request.out_dir,
                               request.accel, request.stick, request.select,
                               iso_b if request.stick and iso_b.is_file() else None)


def measure(profile_name: str, out_dir: Path, boot_runs: int, modes: str, cache_dir: Path,
            no_reference: bool) -> None:
    """`build.py bench`: cold and warm builds and boots of the profile, with the test double (or the real
    archive NEURALDRIVE_OLLAMA_ARCHIVE names), and the reference ISO (cached in `cache_dir`) booted alongside."""
    real_archive = Path(os.environ[REAL_ARCHIVE_ENV]) if os.environ.get(REAL_ARCHIVE_ENV) else None
    mode_list = parse_modes(modes)
    profile = load_profile(profile_name)
    with test_run(profile, real_archive, with_key=profile.ssh.enabled, prefix="neuraldrive-bench-run-") as run:
        run_bench(run.profile, run.bench_options(), out_dir, boot_runs, run.key, mode_list,
                  reference_cache=None if no_reference else cache_dir)
