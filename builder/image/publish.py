"""Outputs in --out: the ISO, its .sha256, the package manifest and build-info.json.

Everything is written under temporary names first and renamed at the end, so a failed build
leaves no ISO (and no half-written companion file) behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.artifacts.lock import Artifact
from builder.files import ROOT, sha256_file
from builder.profile.schema import Profile


@dataclass(frozen=True)
class Outputs:
    iso: Path
    sha256: Path
    packages: Path
    build_info: Path


def output_names(profile: Profile, out_dir: Path) -> Outputs:
    stem = f"{profile.image.name}-{profile.image.version}-{profile.name}-amd64"
    return Outputs(
        iso=out_dir / f"{stem}.iso",
        sha256=out_dir / f"{stem}.iso.sha256",
        packages=out_dir / f"{stem}.packages",
        build_info=out_dir / f"{stem}.build-info.json",
    )


def git_commit() -> str | None:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def git_dirty() -> bool:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, check=False
    )
    return bool(result.stdout.strip())


def default_source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH from the environment, else the last commit's time."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=False
    )
    if result.returncode == 0 and result.stdout.strip().isdigit():
        return int(result.stdout.strip())
    return 0


def publish(
    profile: Profile,
    out_dir: Path,
    built_iso: Path,
    manifest: Path,
    info: dict[str, Any],
) -> Outputs:
    """Move the ISO and write its companions; the ISO appears last, under its final name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(profile, out_dir)
    temps: list[tuple[Path, Path]] = []
    try:
        tmp_iso = names.iso.with_name(f".{names.iso.name}.tmp")
        shutil.move(str(built_iso), tmp_iso)
        temps.append((tmp_iso, names.iso))
        digest = sha256_file(tmp_iso)
        size = tmp_iso.stat().st_size
        tmp_sum = _tmp_write(names.sha256, f"{digest}  {names.iso.name}\n")
        temps.append((tmp_sum, names.sha256))
        tmp_pkgs = names.packages.with_name(f".{names.packages.name}.tmp")
        shutil.copyfile(manifest, tmp_pkgs)
        temps.append((tmp_pkgs, names.packages))
        info = {**info, "iso": {"name": names.iso.name, "sha256": digest, "size_bytes": size}}
        tmp_info = _tmp_write(names.build_info, json.dumps(info, indent=2, sort_keys=True) + "\n")
        temps.append((tmp_info, names.build_info))
        # Companions first, the ISO last: a visible ISO always has its checksum beside it.
        for tmp, final in reversed(temps):
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    return names


def _tmp_write(final: Path, text: str) -> Path:
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    return tmp


def build_info(
    profile: Profile,
    artifacts: list[Artifact],
    lb_version: str,
    source_date_epoch: int,
    stage_seconds: dict[str, float],
) -> dict[str, Any]:
    return {
        "profile": profile.as_dict(),
        "artifacts": [a.as_dict() for a in artifacts],
        "live_build_version": lb_version,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "source_date_epoch": source_date_epoch,
        "stage_seconds": stage_seconds,
    }
