"""`build.py bench`: build and boot figures from one run on this machine, printed and in bench.json.

Builds: cold (empty cache), warm with nothing changed (proves the package layer changes nothing:
same package manifest, same files in the squashfs), warm after editing one unit template, warm
after adding one package. Boots (benchboots.py): console (menu or login prompt), SSH (when the
profile has it) and gateway ready (an authenticated /api/version through TLS), each a first boot
with a fresh persistence disk, with the time spent in the initramfs and `systemd-analyze
critical-chain` of the gateway and the engine. Absolute times vary between machines, so the
ratios are the headline: warm builds over the cold one, and NeuralDrive's power-on to gateway over
a stock Debian live ISO's power-on to login prompt (image/reference.py: built once and cached,
booted in the same run, same harness; goal <= 1.0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import facts
from builder.console import info
from builder.files import ROOT
from builder.image.pipeline import ArtifactOptions, build_iso
from builder.image.publish import Outputs, default_source_date_epoch
from builder.image.reference import Reference, reference_args, reference_iso
from builder.image.render import SOURCES, TEMPLATE_LIBRARY
from builder.profile.schema import Profile
from builder.proof.benchboots import reference_boot, run_boots
from builder.proof.figures import GATEWAY_GOAL_S, REFERENCE_GOAL, Figure, build_ratios, reference_ratios
from builder.vm.media import iso_kernel_path

TEMPLATE_TO_TOUCH = f"includes.chroot/etc/systemd/system/{facts.OLLAMA_USER}.service.j2"
EXTRA_PACKAGE = "htop"


def _source_copy(directory: Path) -> Path:
    """A copy of the template dirs, so the bench can edit one without touching the checkout."""
    for name in (*SOURCES, TEMPLATE_LIBRARY):  # the library too: the unit templates import it
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, directory / name, symlinks=True)
    return directory


def _build(profile: Profile, out: Path, cache: Path, options: ArtifactOptions, source_root: Path | None,
           use_cache: bool = True) -> tuple[float, Outputs, dict[str, Any]]:
    started = time.monotonic()
    outputs = build_iso(profile, out, cache, options, use_cache=use_cache, source_root=source_root)
    seconds = round(time.monotonic() - started, 1)
    return seconds, outputs, json.loads(outputs.build_info.read_text())


def squashfs_listing(iso: Path) -> list[str]:
    """(path, mode, owner, size) of every file in the image: what a user gets, without timestamps."""
    with tempfile.TemporaryDirectory() as tmp:
        squashfs = Path(tmp) / "fs.squashfs"
        subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/live/filesystem.squashfs",
                        str(squashfs)], check=True, capture_output=True)
        listing = subprocess.run(["unsquashfs", "-lln", "-d", "", str(squashfs)], check=True, capture_output=True,
                                 text=True).stdout
    rows = []
    for line in listing.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[0][0] in "-dlcbps":
            mode, owner, size, _, _, rest = parts
            path = rest.split(" ", 1)[1] if " " in rest else rest
            rows.append(f"{mode} {owner} {size if mode[0] != 'd' else '-'} {path}")
    return sorted(rows)


def iso_member_size(iso: Path, member: str) -> int:
    out = subprocess.run(["xorriso", "-indev", str(iso), "-lsl", member],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[4])


def _reference(profile: Profile, cache_dir: Path, modes: list[str], tmp: Path) -> tuple[Reference, dict[str, Any]]:
    """The cached (or newly built) reference, booted once per mode before the builds: one that cannot
    reach its login prompt in the harness stops the bench now, not after an hour of builds."""
    info("== reference: a stock Debian live ISO (plain lb config defaults), built once and cached")
    reference = reference_iso(profile, cache_dir)
    for mode in modes:
        info(f"== reference: one boot to its login prompt ({mode}, a check, not counted)")
        reference_boot(reference.iso, mode, tmp / f"reference-check-{mode}")
    return reference, {"iso": str(reference.iso), "key": reference.key, "from_cache": reference.from_cache,
                       "built": datetime.fromtimestamp(reference.built_at, UTC).isoformat(timespec="seconds"),
                       "lb_config": reference_args(profile),
                       "iso_size_mib": round(reference.iso.stat().st_size / 2**20, 1)}


def run_bench(profile: Profile, options: ArtifactOptions, out_dir: Path, boot_runs: int,
              key: Path | None, modes: list[str], reference_cache: Path | None = None) -> dict[str, Any]:
    """All figures in one run. `key`: an SSH key baked into the profile's image, if any;
    `reference_cache`: where the reference ISO is cached (None: no reference)."""
    results: dict[str, Any] = {"profile": profile.name, "figures": {}, "checks": {}}
    # One epoch for every build of the run, even if a commit lands meanwhile: the identity checks
    # compare images that must differ only in what the bench changed.
    os.environ["SOURCE_DATE_EPOCH"] = str(default_source_date_epoch())
    results["source_date_epoch"] = int(os.environ["SOURCE_DATE_EPOCH"])
    figures: dict[str, Figure] = {}
    with tempfile.TemporaryDirectory(prefix="neuraldrive-bench-") as tmp_name:
        tmp = Path(tmp_name)
        reference = None
        if reference_cache is not None and modes:
            reference, results["reference"] = _reference(profile, reference_cache, modes, tmp)
        cache = tmp / "cache"
        info("== cold build (empty cache)")
        cold_s, cold, cold_info = _build(profile, tmp / "cold", cache, options, None)
        figures["cold_build"] = Figure("cold build", "s", [cold_s])
        info("== warm build, nothing changed")
        same_s, same, same_info = _build(profile, tmp / "same", cache, options, None)
        figures["warm_build_unchanged"] = Figure("warm build, no change", "s", [same_s])
        results["checks"]["warm_unchanged_used_layer"] = same_info["package_layer"]["from_cache"]
        results["checks"]["manifest_identical"] = cold.packages.read_text() == same.packages.read_text()
        cold_files, same_files = squashfs_listing(cold.iso), squashfs_listing(same.iso)
        differing = sorted(set(cold_files) ^ set(same_files))
        results["checks"]["squashfs_files_identical"] = not differing
        results["checks"]["squashfs_differences"] = differing[:20]
        # publish() already hashed each ISO into build-info.json: no second read of 2 × 500 MiB.
        results["checks"]["iso_bit_identical"] = cold_info["iso"]["sha256"] == same_info["iso"]["sha256"]
        info("== warm build after editing one unit template")
        source = _source_copy(tmp / "src")
        template = source / TEMPLATE_TO_TOUCH
        template.write_text(template.read_text() + "# bench: one template changed\n")
        tpl_s, _, tpl_info = _build(profile, tmp / "template", cache, options, source)
        figures["warm_build_template"] = Figure("warm build, one template changed", "s", [tpl_s])
        results["checks"]["template_change_used_layer"] = tpl_info["package_layer"]["from_cache"]
        info(f"== warm build after adding one package ({EXTRA_PACKAGE})")
        more = dataclasses.replace(profile, packages=(*profile.packages, EXTRA_PACKAGE))
        pkg_s, pkg, pkg_info = _build(more, tmp / "package", cache, options, None)
        figures["warm_build_package"] = Figure("warm build, one package added", "s", [pkg_s])
        results["checks"]["package_change_rebuilt_layer"] = not pkg_info["package_layer"]["from_cache"]
        results["checks"]["package_in_manifest"] = any(line.split()[0] == EXTRA_PACKAGE
                                                       for line in pkg.packages.read_text().splitlines())
        figures["iso_size"] = Figure("ISO size", "MiB", [round(cold.iso.stat().st_size / 2**20, 1)])
        figures["squashfs_size"] = Figure("squashfs size", "MiB",
                                          [round(iso_member_size(cold.iso, "/live/filesystem.squashfs") / 2**20, 1)])
        initrd = iso_kernel_path(cold.iso).replace("vmlinuz", "initrd.img")
        figures["initrd_size"] = Figure("initrd size", "MiB", [round(iso_member_size(cold.iso, initrd) / 2**20, 1)])
        results["stage_seconds"] = {"cold": cold_info["stage_seconds"], "template": tpl_info["stage_seconds"]}
        boots = run_boots(cold.iso, reference.iso if reference else None, profile.gateway.port, key, modes,
                          boot_runs, tmp)
        figures.update(boots.figures)
        results["boots"] = boots.boots
        if boots.accel:
            results["accel"], results["qemu"] = boots.accel, boots.qemu
        if boots.analysis:
            results["boot_analysis"] = boots.analysis
    results["figures"] = {k: {"name": f.name, **f.summary()} for k, f in figures.items()}
    results["ratios"] = {**build_ratios(figures), **reference_ratios(figures, modes)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print_bench(results)
    return results


def print_bench(results: dict[str, Any]) -> None:
    print(f"\nNeuralDrive bench, profile {results['profile']} ({results.get('accel', '?')} for boots, "
          f"{results.get('qemu', 'no boots')})")
    print(f"{'figure':<36}{'runs':>5}{'min':>9}{'median':>9}{'max':>9}  unit")
    for figure in results["figures"].values():
        if figure["runs"]:
            print(f"{figure['name']:<36}{figure['runs']:>5}{figure['min']:>9.1f}{figure['median']:>9.1f}"
                  f"{figure['max']:>9.1f}  {figure['unit']}")
    for name, ratio in results["ratios"].items():
        if " / " in name:  # NeuralDrive over the reference
            print(f"ratio {name}: {ratio:.2f} (goal <= {REFERENCE_GOAL:.2f})")
        else:
            print(f"ratio {name} / cold_build: {ratio:.2f}")
    for name, figure in results["figures"].items():
        if name.startswith("boot_gateway_") and figure["runs"]:
            print(f"goal {name}: median {figure['median']:.1f} s (goal <= {GATEWAY_GOAL_S:.0f} s on a quiet 2-core "
                  "machine)")
    for name, value in results["checks"].items():
        if name != "squashfs_differences":
            print(f"check {name}: {value}")
