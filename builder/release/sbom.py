"""The SBOM beside every ISO: CycloneDX 1.6 JSON, made with cyclonedx-python-lib from the image's
package manifest (`<stem>.packages`: one `name<TAB>version` line per installed Debian package) and
the engine archives build-info.json records (URL, sha256, version, whether official).

Deterministic: the timestamp is the build's SOURCE_DATE_EPOCH and the serial number is derived from
the ISO's sha256, so the same ISO always gets the same SBOM.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from builder.files import atomic_write_text
from builder.release.errors import ReleaseError, ReleaseInputError

SBOM_SUFFIX = ".cdx.json"
_NAMESPACE = uuid.UUID("5f0c7a2e-6d1b-4c1e-9a51-6e6575726164")  # fixed: serial numbers derive from the ISO hash


def parse_manifest(path: Path) -> list[tuple[str, str, str | None]]:
    """(name, version, arch or None) per line of a `.packages` manifest; a malformed line is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ReleaseInputError(f"{path}: cannot read ({exc.strerror})") from None
    packages = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ReleaseInputError(f"{path}: line {number}: not 'package<TAB>version': {line[:80]!r}")
        name, _, arch = parts[0].partition(":")
        packages.append((name, parts[1], arch or None))
    if not packages:
        raise ReleaseInputError(f"{path}: lists no package")
    return packages


def read_build_info(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReleaseInputError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise ReleaseInputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("iso"), dict) or "sha256" not in data["iso"]:
        raise ReleaseInputError(f"{path}: no iso.sha256 (not a build-info.json written by `build.py iso`)")
    return data


def official(info: dict[str, Any]) -> bool:
    """An image is official only when every engine archive it holds is an official release asset."""
    artifacts = info.get("artifacts") or []
    return bool(artifacts) and all(a.get("official") is True for a in artifacts)


def _package(name: str, version: str, arch: str | None, suite: str) -> Component:
    qualifiers = {"distro": f"debian-{suite}", **({"arch": arch} if arch else {})}
    purl = PackageURL(type="deb", namespace="debian", name=name, version=version, qualifiers=qualifiers)
    return Component(type=ComponentType.LIBRARY, name=name, version=version, purl=purl, bom_ref=f"deb:{name}")


def _engine(artifact: dict[str, Any]) -> Component:
    return Component(
        type=ComponentType.APPLICATION, name=str(artifact["name"]), version=str(artifact.get("version", "")),
        bom_ref=f"engine:{artifact['name']}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=str(artifact["sha256"]))],
        external_references=[ExternalReference(type=ExternalReferenceType.DISTRIBUTION,
                                               url=XsUri(str(artifact["url"])))],
        properties=[Property(name="neuraldrive:official", value=str(bool(artifact.get("official"))).lower())],
    )


def make_sbom(manifest: Path, build_info: Path) -> str:
    """The CycloneDX JSON document for one ISO (validated before it is returned)."""
    info = read_build_info(build_info)
    profile = info.get("profile") or {}
    image = profile.get("image") or {}
    suite = str((profile.get("debian") or {}).get("suite", "trixie"))
    iso = info["iso"]
    properties = [
        Property(name="neuraldrive:profile", value=str(profile.get("name", ""))),
        Property(name="neuraldrive:official", value=str(official(info)).lower()),
        Property(name="neuraldrive:git_commit", value=str(info.get("git_commit") or "")),
        Property(name="neuraldrive:live_build_version", value=str(info.get("live_build_version", ""))),
    ]
    root = Component(
        type=ComponentType.OPERATING_SYSTEM, name=str(iso.get("name", "")), version=str(image.get("version", "")),
        bom_ref="iso", hashes=[HashType(alg=HashAlgorithm.SHA_256, content=str(iso["sha256"]))], properties=properties,
    )
    metadata = BomMetaData(component=root, properties=properties,
                           timestamp=datetime.fromtimestamp(int(info.get("source_date_epoch") or 0), UTC))
    metadata.tools = ToolRepository(components=[Component(type=ComponentType.APPLICATION, name="neuraldrive-builder")])
    components = [_package(*package, suite) for package in parse_manifest(manifest)]
    components += [_engine(a) for a in info.get("artifacts") or []]
    bom = Bom(components=components, metadata=metadata, serial_number=uuid.uuid5(_NAMESPACE, str(iso["sha256"])))
    bom.register_dependency(root, components)
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    validate_sbom(text, build_info)
    return text + "\n"


def validate_sbom(text: str, source: Path | str) -> None:
    """Check a document against the CycloneDX 1.6 JSON schema; the first violation is the error."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise ReleaseError(f"{source}: SBOM is not valid CycloneDX 1.6: {str(error).splitlines()[0]}")


def write_sbom(manifest: Path, build_info: Path, target: Path) -> Path:
    atomic_write_text(target, make_sbom(manifest, build_info))
    return target
