"""The build flow, one stage after another: profile → artifacts → tree → live-build → outputs."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from builder.artifacts.fetch import FetchPolicy, fetch_artifact
from builder.artifacts.lock import Artifact, resolve_artifacts
from builder.artifacts.pinning import pin_missing
from builder.console import complete_step, debug, format_seconds, info
from builder.errors import OptionError, UnofficialArtifactError
from builder.files import exclusive_lock
from builder.image.builddir import (
    cache_key,
    check_host,
    find_iso,
    find_manifest,
    prepare_build_dir,
    release_mounts,
    remove_build_dir,
)
from builder.image.cache import (
    layer_for,
    layer_key,
    mark_package_start,
    normalize_mtimes,
    restore_layer,
    save_layer,
    tools_archive,
    tools_key,
)
from builder.image.engine import install_engine
from builder.image.lbconfig import lb_config_options
from builder.image.livebuild import BOOTSTRAP, CONFIG, CUSTOMIZE, PACKAGES, LiveBuildRunner, image_phase
from builder.image.publish import Outputs, build_info, default_source_date_epoch, publish
from builder.image.render import StagedArtifact, render_tree
from builder.profile.schema import Profile


@dataclass(frozen=True)
class ArtifactOptions:
    mirror: str | None = None
    archive: str | None = None  # path or URL of the base engine archive
    archive_sha256: str | None = None
    allow_unofficial: bool = False
    offline: bool = False
    lock_path: Path | None = None  # None: config/artifacts.lock.yaml


def artifacts_for(profile: Profile, options: ArtifactOptions) -> list[Artifact]:
    """The profile's archives; a pin the lock lacks is taken from the release's sha256sum.txt first."""
    pinned = pin_missing(profile, lock_path=options.lock_path, mirror=options.mirror, offline=options.offline,
                         skip_base=options.archive is not None and options.archive_sha256 is not None)
    artifacts = resolve_artifacts(
        profile, lock_path=options.lock_path, mirror=options.mirror, archive_override=options.archive,
        override_sha256=options.archive_sha256,
    )
    artifacts = [replace(a, pinned_at_build=True) if a.name in pinned else a for a in artifacts]
    unofficial = [a for a in artifacts if not a.official]
    if profile.release and unofficial and not options.allow_unofficial:
        a = unofficial[0]
        raise UnofficialArtifactError(
            f"{profile.source}: release profile refuses {a.name} pinned to {a.url} (not an official Ollama "
            "release asset); pass --allow-unofficial-artifacts to build anyway"
        )
    return artifacts


def fetch_all(artifacts: list[Artifact], cache_dir: Path, offline: bool) -> list[StagedArtifact]:
    staged = []
    for artifact in artifacts:
        with complete_step(f"Fetching {artifact.name} {artifact.version} ({artifact.sha256[:12]}…)"):
            path = fetch_artifact(artifact, cache_dir, FetchPolicy(offline=offline))
        staged.append(StagedArtifact(artifact=artifact, path=path))
    return staged


def fetch_for(profile: Profile, options: ArtifactOptions, cache_dir: Path) -> list[StagedArtifact]:
    """`build.py fetch`: the profile's archives, pinned, downloaded and verified into the cache."""
    return fetch_all(artifacts_for(profile, options), cache_dir, options.offline)


TREE_MARKER = ".neuraldrive-tree"
TREE_MARKER_TEXT = "Rendered by `build.py tree`: the next `build.py tree` with this --tree-dir replaces it.\n"


def write_tree(profile: Profile, tree_dir: Path | None, out_dir: Path, cache_dir: Path, options: ArtifactOptions,
               with_artifacts: bool = True) -> Path:
    """`build.py tree`: the live-build config dir alone (default OUT/tree-PROFILE), marked as ours."""
    staged = fetch_for(profile, options, cache_dir) if with_artifacts else []
    target = tree_dir or out_dir / f"tree-{profile.name}"
    _clear_tree_dir(target)
    target.mkdir(parents=True)
    (target / TREE_MARKER).write_text(TREE_MARKER_TEXT, encoding="utf-8")
    render_tree(profile, target, staged)
    return target


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


def build_iso(
    profile: Profile,
    out_dir: Path,
    cache_dir: Path,
    options: ArtifactOptions,
    use_cache: bool = True,
    source_root: Path | None = None,
) -> Outputs:
    lb_version = check_host(require_root=True)
    # Builds share the cache's work dirs, package layers and tools chroot: one at a time per cache.
    with exclusive_lock(cache_dir / "build.lock", f"waiting for another build using the cache {cache_dir}"):
        return _build_iso_locked(profile, out_dir, cache_dir, options, use_cache, source_root, lb_version)


def _build_iso_locked(profile: Profile, out_dir: Path, cache_dir: Path, options: ArtifactOptions,
                      use_cache: bool, source_root: Path | None, lb_version: str) -> Outputs:
    artifacts = artifacts_for(profile, options)
    staged = fetch_all(artifacts, cache_dir, options.offline)
    epoch = default_source_date_epoch()
    build_dir = cache_dir / "work" / profile.name
    with complete_step(f"Rendering the live-build tree for profile {profile.name}"):
        prepare_build_dir(build_dir, cache_dir / "live-build" / cache_key(profile))
        if source_root is None:
            render_tree(profile, build_dir, staged)
        else:
            render_tree(profile, build_dir, staged, source_root=source_root)
    env = {"SOURCE_DATE_EPOCH": str(epoch)}
    if options.offline:
        # live-build cannot run without its mirror; an offline build needs a local/snapshot mirror.
        info("  --offline: apt still reads the profile's mirrors (use a local mirror for air-gapped builds)")
    with complete_step(f"Running live-build (log: {build_dir / 'build.log'})") as timing:
        runner = LiveBuildRunner(build_dir, env)
        try:
            runner.phase(CONFIG)
            layer = layer_for(cache_dir, layer_key(lb_config_options(profile), build_dir, lb_version))
            from_cache = use_cache and layer.exists()
            started = time.monotonic()
            if from_cache:
                restore_layer(layer, build_dir)
                runner.timed("package-layer-restore", time.monotonic() - started)
                info(f"  packages   restored from the package layer {layer.key} "
                     f"in {format_seconds(time.monotonic() - started)}")
            else:
                mark_package_start(build_dir)
                runner.phase(BOOTSTRAP)
                runner.phase(PACKAGES)
                started = time.monotonic()
                save_layer(layer, build_dir)
                runner.timed("package-layer-save", time.monotonic() - started)
                info(f"  packages   saved as package layer {layer.key} in {format_seconds(time.monotonic() - started)}")
            started = time.monotonic()
            changed = normalize_mtimes(build_dir, epoch)
            runner.timed("normalize-mtimes", time.monotonic() - started)
            debug(f"  {changed} chroot entries set to SOURCE_DATE_EPOCH {epoch}")
            # The engine goes in after the layer (never part of it), before the hooks that run it.
            started = time.monotonic()
            engine = install_engine(profile, staged, build_dir)
            runner.timed("engine-install", time.monotonic() - started)
            info(engine.summary())
            runner.phase(CUSTOMIZE)
            tools = tools_archive(build_dir, tools_key(build_dir, lb_version))
            tools_from_cache = use_cache and tools.is_file()
            runner.phase(image_phase(tools, reuse_tools=tools_from_cache))
        except BaseException:
            release_mounts(build_dir)  # the build dir stays for its log; nothing stays mounted
            raise
        finally:
            runner.close()
    iso = find_iso(build_dir)
    manifest = find_manifest(build_dir)
    stages = {**runner.run.stage_seconds, "total": timing.get("seconds", 0.0)}
    details = build_info(profile, artifacts, lb_version, epoch, stages)
    details["package_layer"] = {"key": layer.key, "from_cache": from_cache, "path": str(layer.path)}
    details["binary_tools"] = {"archive": tools.name, "from_cache": tools_from_cache}
    details["engine"] = engine.as_dict()
    with complete_step("Publishing outputs"):
        outputs = publish(profile, out_dir, iso, manifest, details)
    info(f"ISO: {outputs.iso} ({os.path.getsize(outputs.iso) / 2**20:.0f} MiB)")
    return outputs


def clean_cache(cache_dir: Path, everything: bool) -> Path:
    """`build.py clean`: the build dirs (mounts released first); with `everything` the whole cache."""
    work = cache_dir / "work"
    if work.is_dir():
        for build_dir in work.iterdir():
            remove_build_dir(build_dir)
    if everything and cache_dir.is_dir():
        shutil.rmtree(cache_dir)
    return cache_dir if everything else work
