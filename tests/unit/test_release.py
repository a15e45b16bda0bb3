"""Releases on fake outputs (a tiny ISO, a package manifest, build-info.json) signed with throwaway
keys made here: the full set is written, `build.py verify` accepts it and rejects a flipped byte,
a changed SHA256SUMS and a signature by another key, each with a one-line error and its exit code;
the SBOM is valid CycloneDX (checked by cyclonedx-python-lib's own validator)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import build
from builder.files import sha256_file
from builder.image.publish import Outputs, output_names
from builder.profile import load_profile
from builder.release import release as release_module
from builder.release.errors import ReleaseError, ReleaseInputError
from builder.release.gpg import export_public, sign_detached
from builder.release.release import ReleaseRequest, finish_release, parse_profiles, run_release, sbom_path
from builder.release.sbom import make_sbom, parse_manifest, validate_sbom
from builder.release.verify import verify_iso

KEY_ENV = "ND_TEST_SIGNING_KEY"
OTHER_ENV = "ND_TEST_OTHER_KEY"
PACKAGES = "adduser\t3.152\nbase-files\t13.8+deb13u8\nbsdutils\t1:2.41.5-0+deb13u1\nlibc6:amd64\t2.41-12\n"


def make_key(home: Path, uid: str) -> str:
    """A throwaway ed25519 signing key without passphrase; its armored secret key."""
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", uid, "ed25519", "sign", "1d"], env=env, check=True, capture_output=True)
    secret = subprocess.run([*gpg, "--armor", "--export-secret-keys"], env=env, check=True, capture_output=True)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)
    return secret.stdout.decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("keys")
    return make_key(base / "a", "Release <release@example.invalid>"), make_key(base / "b", "Other <o@example.invalid>")


@pytest.fixture
def signing(monkeypatch: pytest.MonkeyPatch, keys: tuple[str, str], tmp_path: Path) -> Path:
    """The release key in the environment; returns its public keyring file."""
    monkeypatch.setenv(KEY_ENV, keys[0])
    monkeypatch.setenv(OTHER_ENV, keys[1])
    keyring = tmp_path / "release-key.asc"
    export_public(KEY_ENV, keyring)
    return keyring


def fake_outputs(out_dir: Path, profile: str, official: bool = False) -> Outputs:
    names = output_names(load_profile(profile), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names.iso.write_bytes(b"\x00" * 4096 + profile.encode() + b"\x01" * 4096)
    digest = sha256_file(names.iso)
    names.sha256.write_text(f"{digest}  {names.iso.name}\n")
    names.packages.write_text(PACKAGES)
    url = ("https://github.com/ollama/ollama/releases/download/v0.32.7/ollama-linux-amd64.tar.zst" if official
           else "file:///tmp/double/ollama-linux-amd64.tar.zst")
    info = {"profile": {"name": profile, "image": {"version": "0.1.0"}, "debian": {"suite": "trixie"}},
            "artifacts": [{"name": "ollama-linux-amd64.tar.zst", "version": "unpinned", "url": url,
                           "sha256": "ab" * 32, "official": official}],
            "git_commit": "0" * 40, "live_build_version": "1:20250505+deb13u1", "source_date_epoch": 1700000000,
            "iso": {"name": names.iso.name, "sha256": digest, "size_bytes": names.iso.stat().st_size}}
    names.build_info.write_text(json.dumps(info))
    return names


@pytest.fixture
def released(tmp_path: Path, signing: Path) -> tuple[list[Outputs], Path]:
    outputs = [fake_outputs(tmp_path / "rel", "cpu"), fake_outputs(tmp_path / "rel", "nvidia")]
    finish_release(outputs, tmp_path / "rel", KEY_ENV)
    return outputs, signing


def cli(*args: str) -> Result:
    return CliRunner().invoke(build.cli, list(args))


def test_release_writes_the_full_set_for_two_profiles(tmp_path: Path, signing: Path) -> None:
    out = tmp_path / "rel"
    outputs = [fake_outputs(out, "cpu"), fake_outputs(out, "nvidia")]
    old_umask = os.umask(0o022)  # a usual umask: the published files must come out world-readable
    try:
        result = finish_release(outputs, out, KEY_ENV)
    finally:
        os.umask(old_umask)
    listed = (out / "SHA256SUMS").read_text().splitlines()
    assert len(listed) == 10 and {line.split()[1] for line in listed} == {p.name for p in result.files}
    for item in outputs:
        assert sbom_path(item).is_file() and sbom_path(item).name.endswith("-amd64.cdx.json")
    assert (out / "SHA256SUMS.asc").read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    assert result.unofficial == [o.iso.name for o in outputs] and "UNOFFICIAL" in result.summary()
    # Any sha256sum checks the set as well.
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, check=False).returncode == 0
    # Published: readable by whoever serves them (mkstemp's 0600 made SHA256SUMS and the SBOMs private).
    assert [p.name for p in out.iterdir() if p.stat().st_mode & 0o044 != 0o044] == []


def test_verify_accepts_a_release_and_says_unofficial(released: tuple[list[Outputs], Path]) -> None:
    outputs, keyring = released
    verified = verify_iso(outputs[0].iso, keyring=keyring)
    assert verified.sha256 == sha256_file(outputs[0].iso) and len(verified.signer) == 40
    assert verified.official is False and "UNOFFICIAL" in verified.summary()
    result = cli("verify", str(outputs[1].iso), "--keyring", str(keyring))
    assert result.exit_code == 0 and ": OK (sha256 " in result.output


def test_verify_rejects_a_flipped_byte(released: tuple[list[Outputs], Path]) -> None:
    outputs, keyring = released
    data = bytearray(outputs[0].iso.read_bytes())
    data[100] ^= 0x01
    outputs[0].iso.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=r"does not match .* in .*SHA256SUMS \(damaged or altered"):
        verify_iso(outputs[0].iso, keyring=keyring)
    result = cli("verify", str(outputs[0].iso), "--keyring", str(keyring))
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_verify_rejects_changed_sums_and_another_keys_signature(released: tuple[list[Outputs], Path]) -> None:
    outputs, keyring = released
    sums = outputs[0].iso.parent / "SHA256SUMS"
    original = sums.read_bytes()
    sums.write_bytes(original[:-2] + bytes([original[-2] ^ 0x01]) + b"\n")  # one byte of the list flipped
    with pytest.raises(ReleaseError, match="bad signature"):
        verify_iso(outputs[0].iso, keyring=keyring)
    sums.write_bytes(original)
    sign_detached(sums, sums.with_name("SHA256SUMS.asc"), OTHER_ENV)  # a valid signature, by a stranger
    with pytest.raises(ReleaseError, match="made by a key that is not in the keyring"):
        verify_iso(outputs[0].iso, keyring=keyring)
    result = cli("verify", str(outputs[0].iso), "--keyring", str(keyring))
    assert result.exit_code == 1 and result.output.count("\n") == 1


def test_verify_bad_input_exits_2(released: tuple[list[Outputs], Path], tmp_path: Path) -> None:
    outputs, keyring = released
    iso = str(outputs[0].iso)
    (tmp_path / "garbage.asc").write_text("not a key\n")
    cases = [(iso,), (str(tmp_path / "missing.iso"), "--keyring", str(keyring)),
             (iso, "--keyring", str(tmp_path / "nokey.asc")), (iso, "--keyring", str(tmp_path / "garbage.asc")),
             (iso, "--keyring", str(keyring), "--signature", str(tmp_path / "none.asc"))]
    for args in cases:
        result = cli("verify", *args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, (args, result.output)
    (outputs[0].iso.parent / "SHA256SUMS").write_text("garbage\n")
    sign_detached(outputs[0].iso.parent / "SHA256SUMS", outputs[0].iso.parent / "SHA256SUMS.asc", KEY_ENV)
    with pytest.raises(ReleaseInputError, match="line 1: not '<sha256>  <file name>'"):
        verify_iso(outputs[0].iso, keyring=keyring)


def test_sbom_is_valid_cyclonedx_with_packages_and_engine(tmp_path: Path) -> None:
    outputs = fake_outputs(tmp_path, "cpu")
    text = make_sbom(outputs.packages, outputs.build_info)
    validate_sbom(text, "sbom")  # cyclonedx-python-lib's JSON-schema validator
    doc = json.loads(text)
    purls = {c["name"]: c.get("purl") for c in doc["components"]}
    assert purls["bsdutils"] == "pkg:deb/debian/bsdutils@1:2.41.5-0%2Bdeb13u1?distro=debian-trixie"
    assert purls["libc6"] == "pkg:deb/debian/libc6@2.41-12?arch=amd64&distro=debian-trixie"
    engine = next(c for c in doc["components"] if c["type"] == "application")
    assert engine["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    root = doc["metadata"]["component"]
    assert root["hashes"][0]["content"] == sha256_file(outputs.iso)
    assert {"name": "neuraldrive:official", "value": "false"} in root["properties"]
    assert text == make_sbom(outputs.packages, outputs.build_info)  # deterministic
    with pytest.raises(ReleaseError, match=r"not valid CycloneDX 1\.6"):
        validate_sbom(json.dumps({**doc, "components": [{"name": "x"}]}), "broken")


def test_official_build_is_not_marked(tmp_path: Path) -> None:
    outputs = fake_outputs(tmp_path, "cpu", official=True)
    doc = json.loads(make_sbom(outputs.packages, outputs.build_info))
    assert {"name": "neuraldrive:official", "value": "true"} in doc["metadata"]["component"]["properties"]
    assert finish_release([outputs], tmp_path, None).unofficial == []


def test_release_refuses_damaged_or_missing_outputs(tmp_path: Path) -> None:
    outputs = fake_outputs(tmp_path, "cpu")
    outputs.iso.write_bytes(b"other")
    with pytest.raises(ReleaseError, match=r"does not match .*\.iso\.sha256"):
        finish_release([outputs], tmp_path, None)
    outputs.packages.unlink()
    with pytest.raises(ReleaseInputError, match=r"\.packages: missing"):
        finish_release([outputs], tmp_path, None)
    outputs.packages.write_text("just-a-name\n")
    with pytest.raises(ReleaseInputError, match="line 1: not 'package<TAB>version'"):
        parse_manifest(outputs.packages)


def test_release_checks_the_signing_key_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    monkeypatch.setattr(release_module, "_build", lambda name, *a: built.append(name))
    monkeypatch.delenv(KEY_ENV, raising=False)
    request = ReleaseRequest(profiles=["cpu"], out_dir=tmp_path, cache_dir=tmp_path, sign_key_env=KEY_ENV)
    with pytest.raises(ReleaseInputError, match=f"{KEY_ENV}: not set"):
        run_release(request)
    monkeypatch.setenv(KEY_ENV, "-----BEGIN PGP PRIVATE KEY BLOCK-----\ngarbage\n")
    with pytest.raises(ReleaseInputError, match="must hold exactly one OpenPGP secret key"):
        run_release(request)
    assert built == []
    result = cli("release", "--profiles", "cpu", "--out", str(tmp_path), "--sign-key-env", KEY_ENV)
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_skip_build_releases_what_is_there(tmp_path: Path, signing: Path) -> None:
    fake_outputs(tmp_path, "cpu")
    result = cli("release", "--profiles", "cpu", "--skip-build", "--out", str(tmp_path), "--sign-key-env", KEY_ENV)
    assert result.exit_code == 0, result.output
    assert "UNOFFICIAL" in result.output and (tmp_path / "SHA256SUMS.asc").is_file()
    with pytest.raises(ReleaseInputError, match="distinct profile names"):
        parse_profiles("cpu,,cpu")
