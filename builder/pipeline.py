"""The build flow, one stage after another: profile → artifacts → tree → live-build → outputs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .artifacts import FetchPolicy, fetch_artifact
from .binarytools import tools_archive, tools_key
from .engine import install_engine
from .errors import UnofficialArtifactError
from .layer import layer_for, layer_key, mark_package_start, normalize_mtimes, restore_layer, save_layer
from .lbconfig import lb_config_args
from .livebuild import (
    BOOTSTRAP,
    CONFIG,
    CUSTOMIZE,
    PACKAGES,
    LiveBuildRunner,
    cache_key,
    check_host,
    find_iso,
    find_manifest,
    image_phase,
    prepare_build_dir,
    release_mounts,
)
from .lock import Artifact, resolve_artifacts
from .pinning import pin_missing
from .profile import Profile
from .render import StagedArtifact, render_tree
from .report import Outputs, build_info, default_source_date_epoch, publish
from .steps import complete_step, debug, format_seconds, info


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


def build_iso(
    profile: Profile,
    out_dir: Path,
    cache_dir: Path,
    options: ArtifactOptions,
    use_cache: bool = True,
    source_root: Path | None = None,
) -> Outputs:
    lb_version = check_host(require_root=True)
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
            layer = layer_for(cache_dir, layer_key(lb_config_args(profile), build_dir, lb_version))
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
