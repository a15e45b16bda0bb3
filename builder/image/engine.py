"""Install the verified engine archive(s) into the image chroot, without the GPU backends the image
cannot use.

Runs after the package layer is saved or restored (the engine is never part of the layer) and
before the customize phase, whose hooks run `ollama --version` and rely on /usr/local/bin/ollama.
The NVIDIA driver version the CUDA backends are checked against is the one the chroot's package set
holds (its dpkg status), not a constant.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import facts
from builder.errors import ArtifactError, LiveBuildError
from builder.files import atomic_write_text, sha256_file
from builder.image.backends import PrunePlan, plan_prune
from builder.image.extract import extract_archive
from builder.image.render import StagedArtifact
from builder.profile.schema import Profile

DPKG_STATUS = "var/lib/dpkg/status"
# The user-space CUDA driver first (what the CUDA runtime talks to), then the kernel module.
NVIDIA_DRIVER_PACKAGES = ("libcuda1", "nvidia-kernel-dkms")


@dataclass(frozen=True)
class EngineInstall:
    plan: PrunePlan
    nvidia_driver: str | None
    driver_package: str | None
    entries: int  # files and links written
    skipped_bytes: int  # of the dropped backends

    def as_dict(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "nvidia_driver": self.nvidia_driver, "driver_package": self.driver_package,
                "entries": self.entries, "dropped_bytes": self.skipped_bytes}

    def summary(self) -> str:
        dropped = ", ".join(p.rsplit("/", 1)[-1] for p in sorted(self.plan.dropped)) or "none"
        kept = ", ".join(p.rsplit("/", 1)[-1] for p in self.plan.kept) or "none"
        return (f"  engine     {self.entries} files; GPU backends kept: {kept}; dropped: {dropped} "
                f"({self.skipped_bytes / 2**20:.0f} MiB not written)")


def installed_versions(status_text: str) -> dict[str, str]:
    """Package -> version of every installed package in a dpkg status file."""
    versions: dict[str, str] = {}
    for paragraph in re.split(r"\n\s*\n", status_text):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", paragraph, re.MULTILINE))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields and "Version" in fields:
            versions[fields["Package"]] = fields["Version"]
    return versions


def upstream_version(debian_version: str) -> str:
    """1:550.163.01-2~deb13u1 -> 550.163.01."""
    return re.sub(r"^\d+:", "", debian_version).split("-", 1)[0]


def nvidia_driver(chroot: Path) -> tuple[str, str] | None:
    """(package, upstream version) of the NVIDIA driver installed in `chroot`, if any."""
    status = chroot / DPKG_STATUS
    try:
        versions = installed_versions(status.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        raise LiveBuildError(f"{status}: cannot read the image's package status ({exc.strerror})") from None
    for package in NVIDIA_DRIVER_PACKAGES:
        if package in versions:
            return package, upstream_version(versions[package])
    return None


def install_engine(profile: Profile, staged: list[StagedArtifact], build_dir: Path) -> EngineInstall:
    """Check each archive's sha256 again, extract it safely into the chroot's /usr/local without the
    dropped backends, and list what was written for hook 03-install-extras."""
    if not staged:
        raise ArtifactError("no engine archive to install (a tree rendered with --no-artifacts cannot be built)")
    chroot = build_dir / "chroot"
    found = nvidia_driver(chroot)
    if "nvidia" in profile.gpu.vendors and found is None:
        raise LiveBuildError(f"{chroot / DPKG_STATUS}: gpu.vendors has nvidia but neither of "
                             f"{', '.join(NVIDIA_DRIVER_PACKAGES)} is installed")
    driver = found[1] if found else None
    vendors, backend = profile.gpu.vendors, profile.gpu.amd.backend

    def keep(name: str) -> bool:
        return plan_prune([name], vendors, backend, driver).keeps(name)

    prefix = chroot / facts.ENGINE_PREFIX.lstrip("/")
    old_lib = chroot / facts.OLLAMA_LIB.lstrip("/")
    if old_lib.is_symlink() or old_lib.is_file():
        old_lib.unlink()
    elif old_lib.is_dir():
        shutil.rmtree(old_lib)  # as Ollama's installer does before an upgrade
    members: list[str] = []
    written: set[str] = set()
    skipped = 0
    for item in staged:
        actual = sha256_file(item.path)
        if actual != item.artifact.sha256:
            raise ArtifactError(f"{item.path}: sha256 {actual}, but {item.artifact.name} is pinned to "
                                f"{item.artifact.sha256}")
        result = extract_archive(item.path, prefix, keep, label=item.artifact.name)
        members += result.members
        written.update(result.files, result.links)
        skipped += result.skipped_bytes
    manifest = build_dir / "config" / facts.STAGED_ARTIFACT_SUBDIR / facts.ENGINE_MANIFEST
    atomic_write_text(manifest, "".join(f"{name}\n" for name in sorted(written)))
    return EngineInstall(plan=plan_prune(members, vendors, backend, driver), nvidia_driver=driver,
                         driver_package=found[0] if found else None, entries=len(written), skipped_bytes=skipped)
