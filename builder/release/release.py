"""`build.py release`: the tag workflow's steps on any prepared host. For each profile: build the
ISO, boot-check it in QEMU, write its SBOM; then SHA256SUMS over every file of the set and a
detached OpenPGP signature of it, with the key from the environment (never from the repo).

`--skip-build` takes ISOs already in --out (CI: the matrix jobs' outputs gathered in one dir) and
only checks them, writes the SBOMs, the sums and the signature. `--test-double` builds with the
Ollama-API test double instead of the pinned engine: every such image says unofficial
(build-info.json's artifacts, the SBOM's `neuraldrive:official`, `build.py verify`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from builder.console import complete_step, info
from builder.files import sha256_file
from builder.image.pipeline import ArtifactOptions
from builder.image.publish import Outputs, output_names
from builder.profile import load_profile
from builder.release.errors import ReleaseError, ReleaseInputError
from builder.release.gpg import check_signing_key, sign_detached
from builder.release.sbom import SBOM_SUFFIX, official, read_build_info, write_sbom
from builder.release.sums import SIGNATURE_SUFFIX, SUMS, write_sums

DEFAULT_KEY_ENV = "NEURALDRIVE_SIGNING_KEY"


@dataclass(frozen=True)
class ReleaseRequest:
    profiles: list[str]
    out_dir: Path
    cache_dir: Path
    artifacts: ArtifactOptions = field(default_factory=ArtifactOptions)
    build: bool = True
    boot_check: bool = True
    accel: str = "auto"
    sign_key_env: str | None = DEFAULT_KEY_ENV  # None: an unsigned set
    test_double: bool = False


@dataclass(frozen=True)
class ReleaseSet:
    files: list[Path]
    sums: Path
    signature: Path | None
    signer: str | None
    unofficial: list[str]  # ISO names whose engine is not an official release asset

    def summary(self) -> str:
        signed = f"{self.signature.name} by {self.signer}" if self.signature else "UNSIGNED"
        lines = [f"release: {len(self.files)} files in {self.sums.parent}, {self.sums.name}, {signed}"]
        lines += [f"  UNOFFICIAL: {name}" for name in self.unofficial]
        return "\n".join(lines)


def sbom_path(outputs: Outputs) -> Path:
    return outputs.iso.with_name(outputs.iso.name.removesuffix(".iso") + SBOM_SUFFIX)


def parse_profiles(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise ReleaseInputError(f"--profiles: {text!r}: give distinct profile names, comma-separated")
    return names


def run_release(request: ReleaseRequest) -> ReleaseSet:
    if request.sign_key_env is not None:
        check_signing_key(request.sign_key_env)  # before hours of building, not after
    names = [output_names(load_profile(name), request.out_dir) for name in request.profiles]
    if request.build:
        with _engine(request) as artifacts:
            for name, expected in zip(request.profiles, names, strict=True):
                built = _build(name, request, artifacts)
                if built.iso != expected.iso:
                    raise ReleaseError(f"{name}: built {built.iso}, expected {expected.iso}")
                if request.boot_check:
                    _boot_check(built.iso, request.accel)
    return finish_release(names, request.out_dir, request.sign_key_env)


def finish_release(outputs: list[Outputs], out_dir: Path, sign_key_env: str | None) -> ReleaseSet:
    """SBOMs, SHA256SUMS and its signature for ISOs already built into `out_dir`."""
    files: list[Path] = []
    unofficial = []
    for item in outputs:
        digest = _check_outputs(item)
        with complete_step(f"SBOM for {item.iso.name}"):
            files += [item.iso, item.sha256, item.packages, item.build_info,
                      write_sbom(item.packages, item.build_info, sbom_path(item))]
        if not official(read_build_info(item.build_info)):
            unofficial.append(item.iso.name)
        info(f"  {item.iso.name}: sha256 {digest}")
    sums = out_dir / SUMS
    signature = sums.with_name(sums.name + SIGNATURE_SUFFIX)
    signature.unlink(missing_ok=True)  # never a signature beside sums it was not made for
    with complete_step(f"Writing {sums}"):
        write_sums(files, sums)
    signer = None
    if sign_key_env is not None:
        with complete_step(f"Signing {sums.name} with the key in ${sign_key_env}"):
            signer = sign_detached(sums, signature, sign_key_env)
    return ReleaseSet(files=files, sums=sums, signature=signature if signer else None, signer=signer,
                      unofficial=unofficial)


def _check_outputs(item: Outputs) -> str:
    """Every companion present, and the ISO matching both its .sha256 and build-info.json."""
    for path in (item.iso, item.sha256, item.packages, item.build_info):
        if not path.is_file():
            raise ReleaseInputError(f"{path}: missing (build it with `build.py iso`, or drop --skip-build)")
    digest = sha256_file(item.iso)
    recorded = {item.sha256.name: item.sha256.read_text(encoding="utf-8").split()[:1],
                item.build_info.name: [read_build_info(item.build_info)["iso"]["sha256"]]}
    for source, value in recorded.items():
        if value != [digest]:
            found = value[0] if value else "empty"
            raise ReleaseError(f"{item.iso}: sha256 {digest} does not match {source} ({found})")
    return digest


@contextmanager
def _engine(request: ReleaseRequest) -> Iterator[ArtifactOptions]:
    """The artifact options for every build: the caller's, or the test double's archive (unofficial)."""
    if not request.test_double:
        yield request.artifacts
        return
    from builder.proof.ollama_double.package import build_archive

    with tempfile.TemporaryDirectory(prefix="neuraldrive-release-") as tmp:
        archive = build_archive(Path(tmp) / "double")
        info(f"  --test-double: every image of this set is UNOFFICIAL (engine {archive.name} from the test double)")
        yield ArtifactOptions(archive=str(archive), archive_sha256=sha256_file(archive), allow_unofficial=True,
                              offline=request.artifacts.offline)


def _build(name: str, request: ReleaseRequest, artifacts: ArtifactOptions) -> Outputs:
    from builder.image.pipeline import build_iso

    return build_iso(load_profile(name), request.out_dir, request.cache_dir, artifacts)


def _boot_check(iso: Path, accel: str) -> None:
    from builder.vm.boot import boot_iso
    from builder.vm.machine import BootSpec

    with complete_step(f"Boot check: {iso.name} (BIOS, CD) to the console"):
        boot_iso(BootSpec(iso=iso, accel=accel), True, 900)
