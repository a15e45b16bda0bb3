"""`build.py verify ISO`: the signature over SHA256SUMS first (so the list itself is trusted), then
the ISO's sha256 against its line. Exit 1 for a file or signature that does not match, 2 for input
that cannot be checked (missing ISO, sums, signature or keyring)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.files import sha256_file
from builder.release.errors import ReleaseError, ReleaseInputError
from builder.release.gpg import verify_detached
from builder.release.sbom import official, read_build_info
from builder.release.sums import SIGNATURE_SUFFIX, SUMS, read_sums


@dataclass(frozen=True)
class Verified:
    iso: Path
    sha256: str
    signer: str
    official: bool | None  # None: no build-info.json beside the ISO to tell

    def summary(self) -> str:
        note = {True: "", False: " — UNOFFICIAL image (engine archive not an official release asset)",
                None: ""}[self.official]
        return f"{self.iso.name}: OK (sha256 {self.sha256}, SHA256SUMS signed by {self.signer}){note}"


def verify_iso(iso: Path, sums: Path | None = None, keyring: Path | None = None,
               signature: Path | None = None) -> Verified:
    if not iso.is_file():
        raise ReleaseInputError(f"{iso}: no such ISO file")
    sums = sums or iso.parent / SUMS
    signature = signature or sums.with_name(sums.name + SIGNATURE_SUFFIX)
    if keyring is None:
        raise ReleaseInputError("--keyring: needed (the release's OpenPGP public key, armored or binary)")
    if not sums.is_file():
        raise ReleaseInputError(f"{sums}: no such SHA256SUMS file (pass --sums)")
    signer = verify_detached(sums, signature, keyring)
    listed = read_sums(sums)
    if iso.name not in listed:
        raise ReleaseError(f"{iso.name}: not listed in {sums}")
    digest = sha256_file(iso)
    if digest != listed[iso.name]:
        raise ReleaseError(f"{iso}: sha256 {digest} does not match {listed[iso.name]} in {sums} (damaged or altered)")
    return Verified(iso=iso, sha256=digest, signer=signer, official=_official_beside(iso, listed))


def _official_beside(iso: Path, listed: dict[str, str]) -> bool | None:
    """Whether the build-info.json beside the ISO says official — only when it matches its signed sum."""
    info = iso.with_name(iso.name.removesuffix(".iso") + ".build-info.json")
    if not info.is_file() or listed.get(info.name) != sha256_file(info):
        return None
    try:
        return official(read_build_info(info))
    except ReleaseInputError:
        return None
