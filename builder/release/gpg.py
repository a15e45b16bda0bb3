"""OpenPGP signing and checking with Debian's GnuPG, always in a throwaway GNUPGHOME: the user's own
keyrings are never read or written, and only the keys given (the signing key from the environment,
the verifier's keyring file) are known to gpg.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder.release.errors import ReleaseError, ReleaseInputError


def _gpg() -> str:
    gpg = shutil.which("gpg")
    if gpg is None:
        raise ReleaseInputError("gpg: not found (apt-get install gpg)")
    return gpg


@contextmanager
def gnupg_home() -> Iterator[dict[str, str]]:
    """The environment for gpg with a fresh GNUPGHOME; its agent is stopped and the dir removed after."""
    with tempfile.TemporaryDirectory(prefix="nd-gpg-") as home:
        os.chmod(home, 0o700)
        env = {**os.environ, "GNUPGHOME": home, "LC_ALL": "C"}
        try:
            yield env
        finally:
            subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)


def _run(args: list[str], env: dict[str, str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([_gpg(), "--batch", "--no-tty", *args], env=env, input=data, capture_output=True,
                          check=False)


def _first_error(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = [line for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("gpg: ") if lines else f"gpg exited {result.returncode}"


def secret_fingerprints(env: dict[str, str]) -> list[str]:
    listing = _run(["--with-colons", "--list-secret-keys"], env).stdout.decode()
    fingerprints, primary = [], False
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            primary = True
        elif fields[0] == "fpr" and primary:
            fingerprints.append(fields[9])
            primary = False
    return fingerprints


def _import_secret(key_env: str, env: dict[str, str]) -> str:
    """Import the one secret key held in environment variable `key_env`; its fingerprint."""
    armored = os.environ.get(key_env, "")
    if not armored.strip():
        raise ReleaseInputError(f"{key_env}: not set (an armored OpenPGP secret key to sign SHA256SUMS with; "
                                "--no-sign makes an unsigned set)")
    imported = _run(["--import"], env, armored.encode())
    fingerprints = secret_fingerprints(env)
    if imported.returncode != 0 or len(fingerprints) != 1:
        found = f"{len(fingerprints)} secret keys" if imported.returncode == 0 else _first_error(imported)
        raise ReleaseInputError(f"{key_env}: must hold exactly one OpenPGP secret key ({found})")
    return fingerprints[0]


def check_signing_key(key_env: str) -> str:
    """Fail early (before any build) when the signing key is missing or unusable; its fingerprint."""
    with gnupg_home() as env:
        return _import_secret(key_env, env)


def sign_detached(data_file: Path, signature: Path, key_env: str) -> str:
    """Sign `data_file` (armored, detached) with the secret key held in environment variable `key_env`
    (`key_env`_PASSPHRASE, if set, unlocks it); returns the signer's fingerprint."""
    passphrase = os.environ.get(f"{key_env}_PASSPHRASE", "")
    with gnupg_home() as env:
        fingerprint = _import_secret(key_env, env)
        tmp = signature.with_name(f".{signature.name}.tmp")
        result = _run(["--pinentry-mode", "loopback", "--passphrase-fd", "0", "--local-user", fingerprint,
                       "--armor", "--detach-sign", "--yes", "--output", str(tmp), str(data_file)],
                      env, passphrase.encode() + b"\n")
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise ReleaseError(f"{data_file}: signing failed: {_first_error(result)}")
        os.replace(tmp, signature)
        return fingerprint


_REASONS = ("BADSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "NODATA", "ERRSIG")  # most telling first


def verify_detached(data_file: Path, signature: Path, keyring: Path) -> str:
    """Check `signature` over `data_file` against the public key(s) in `keyring` (armored or binary);
    returns the fingerprint of the key that made it."""
    for path, what in ((signature, "signature"), (keyring, "keyring")):
        if not path.is_file():
            raise ReleaseInputError(f"{path}: no such {what} file")
    with gnupg_home() as env:
        imported = _run(["--import", str(keyring)], env)
        keys = _run(["--with-colons", "--list-keys"], env).stdout.decode()
        if imported.returncode != 0 or not any(line.startswith("pub:") for line in keys.splitlines()):
            raise ReleaseInputError(f"{keyring}: holds no OpenPGP public key ({_first_error(imported)})")
        result = _run(["--status-fd", "1", "--verify", str(signature), str(data_file)], env)
        status = [line.split()[1:] for line in result.stdout.decode(errors="replace").splitlines()
                  if line.startswith("[GNUPG:] ")]
        good = any(fields and fields[0] == "GOODSIG" for fields in status)
        valid = [fields[1] for fields in status if len(fields) > 1 and fields[0] == "VALIDSIG"]
        if result.returncode != 0 or not good or not valid:
            seen = {fields[0] for fields in status if fields}
            reason = next((r for r in _REASONS if r in seen), None)
            detail = {"BADSIG": "bad signature (the file or the signature was changed)",
                      "ERRSIG": "cannot check it (no key in the keyring made it)",
                      "NO_PUBKEY": "made by a key that is not in the keyring",
                      "EXPKEYSIG": "made by an expired key", "REVKEYSIG": "made by a revoked key",
                      "NODATA": "not an OpenPGP signature"}.get(reason or "", _first_error(result))
            raise ReleaseError(f"{signature}: does not verify {data_file.name} with {keyring}: {detail}")
        return valid[0]


def export_public(key_env: str, target: Path) -> None:
    """Write the public half of the signing key (for tests and for publishing it once, out of band)."""
    with gnupg_home() as env:
        _run(["--import"], env, os.environ.get(key_env, "").encode())
        result = _run(["--armor", "--export"], env)
        if result.returncode != 0 or not result.stdout:
            raise ReleaseInputError(f"{key_env}: no key to export")
        target.write_bytes(result.stdout)
