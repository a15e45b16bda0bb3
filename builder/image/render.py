"""Render the live-build config tree from the project's top-level template dirs.

Top-level dir           lands in (inside the build dir)
hooks/                  config/hooks/live/
hooks.normal/           config/hooks/normal/        (replaces live-build's stock hook of the same name)
includes.chroot/        config/includes.chroot_after_packages/
packages.lists/         config/package-lists/       (gpu-<vendor>.* only for the profile's vendors)
bootloaders/            config/bootloaders/
`*.j2` files are rendered with jinja2 (StrictUndefined, plus one escaping filter per target syntax
from builder/image/escape.py: sh, envfile, unit, unit_arg, caddy, num, word) and lose the suffix; everything else is
copied with its mode; symlinks stay symlinks. The verified engine archives are staged in
config/neuraldrive-artifacts/ (the builder installs the engine itself, builder/image/engine.py, and lists
what it wrote there for hook 03-install-extras), and `auto/config` records the exact `lb config` call.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from builder import facts as facts_module
from builder.artifacts.lock import Artifact
from builder.errors import TreeError
from builder.files import ROOT
from builder.image.escape import FILTERS
from builder.image.lbconfig import lb_config_args
from builder.profile.checks import authorized_keys_path
from builder.profile.schema import Profile
from builder.profile.sshkeys import read_authorized_keys
from builder.profile.strict_yaml import shown

SOURCES = {
    "hooks": "config/hooks/live",
    "hooks.normal": "config/hooks/normal",
    "includes.chroot": "config/includes.chroot_after_packages",
    "packages.lists": "config/package-lists",
    "bootloaders": "config/bootloaders",
}
# Macros the templates import (`{% from "config/templates/units.j2" import ... %}`): part of every
# template root, never rendered into the tree itself.
TEMPLATE_LIBRARY = "config/templates"
GPU_LIST_PREFIX = "gpu-"


@dataclass(frozen=True)
class StagedArtifact:
    artifact: Artifact
    path: Path  # the verified file in the cache


def facts() -> dict[str, Any]:
    return {k: v for k, v in vars(facts_module).items() if k.isupper()}


def template_context(profile: Profile, staged: list[Artifact]) -> dict[str, Any]:
    return {"profile": profile, "facts": facts(), "artifacts": staged}


def jinja_environment(loader: jinja2.BaseLoader | None = None) -> jinja2.Environment:
    """The renderer's settings, with the escaping filters every template uses for profile values."""
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


@functools.lru_cache(maxsize=8)
def _tree_environment(source_root: str) -> jinja2.Environment:
    """One environment per template root: compiled templates are reused (auto_reload re-reads a
    template whose file changed)."""
    return jinja_environment(jinja2.FileSystemLoader(source_root))


def render_file(template: Path, profile: Profile, staged: list[Artifact] | None = None,
                source_root: Path = ROOT) -> str:
    """One `*.j2` file (a path under `source_root`) as render_tree renders it: same environment,
    same context (tests render single units, hooks and the Caddyfile with it)."""
    relative = template.relative_to(source_root) if template.is_absolute() else template
    context = template_context(profile, staged or [])
    return _tree_environment(str(source_root)).get_template(relative.as_posix()).render(context)


def render_tree(
    profile: Profile,
    build_dir: Path,
    staged: list[StagedArtifact],
    source_root: Path = ROOT,
) -> Path:
    """Write a complete live-build config dir into `build_dir` (which must not hold a config yet)."""
    if (build_dir / "config").exists():
        raise TreeError(f"{build_dir}: already holds a live-build config; use an empty directory")
    # Parsed again here, before anything is written (the file may have changed since the profile
    # was loaded): only the validated key lines go into the image, never the file's own bytes.
    keys_file = authorized_keys_path(profile)
    keys = None if keys_file is None else read_authorized_keys(keys_file)
    build_dir.mkdir(parents=True, exist_ok=True)
    env = _tree_environment(str(source_root))
    context = template_context(profile, [s.artifact for s in staged])
    for source_name, target_name in SOURCES.items():
        source_dir = source_root / source_name
        if source_dir.is_dir():
            _render_dir(env, source_root, source_dir, build_dir / target_name, context, profile)
    _stage_artifacts(staged, build_dir)
    if keys is not None:
        _install_authorized_keys(keys, build_dir)
    _write_auto_config(profile, build_dir)
    return build_dir


def _selected(relative: Path, profile: Profile) -> bool:
    """Per-vendor package lists are data: gpu-<vendor>.list.chroot is used iff the vendor is."""
    name = relative.name
    if relative.parts[0] == "packages.lists" and name.startswith(GPU_LIST_PREFIX):
        vendor = name[len(GPU_LIST_PREFIX):].split(".", 1)[0]
        return vendor in profile.gpu.vendors
    return True


def _render_dir(
    env: jinja2.Environment,
    root: Path,
    source_dir: Path,
    target_dir: Path,
    context: dict[str, Any],
    profile: Profile,
) -> None:
    for source in sorted(source_dir.rglob("*")):
        relative = source.relative_to(root)
        if not _selected(relative, profile) or (source.is_dir() and not source.is_symlink()):
            continue
        if "__pycache__" in relative.parts or source.suffix == ".pyc":
            continue  # a host's bytecode (from running the in-image code's tests) never reaches the image
        target = target_dir / source.relative_to(source_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        elif source.suffix == ".j2":
            target = target.with_suffix("")
            try:
                text = env.get_template(relative.as_posix()).render(context)
            except jinja2.TemplateError as exc:
                raise TreeError(f"{relative}: {exc.__class__.__name__}: {exc}") from None
            target.write_text(text, encoding="utf-8")
            shutil.copymode(source, target)
        else:
            shutil.copy2(source, target)


def _stage_artifacts(staged: list[StagedArtifact], build_dir: Path) -> None:
    target_dir = build_dir / "config" / facts_module.STAGED_ARTIFACT_SUBDIR
    target_dir.mkdir(parents=True, exist_ok=True)
    for item in staged:
        target = target_dir / item.artifact.name
        try:
            os.link(item.path, target)  # the cache is read-only by convention: a hard link is enough
        except OSError:
            shutil.copyfile(item.path, target)


def _install_authorized_keys(lines: list[str], build_dir: Path) -> None:
    target = build_dir / SOURCES["includes.chroot"] / "etc/ssh/authorized_keys" / facts_module.ADMIN_USER
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    target.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)


def _write_auto_config(profile: Profile, build_dir: Path) -> None:
    auto = build_dir / "auto"
    auto.mkdir(exist_ok=True)
    args = " \\\n    ".join(shlex.quote(a) for a in lb_config_args(profile))
    script = (
        "#!/bin/sh\n"
        # shown(): one line whatever the path holds (the loader already refuses control characters).
        f"# Generated by NeuralDrive from profile {shown(profile.name)} ({shown(profile.source)}).\n"
        "set -e\n"
        f"lb config noauto \\\n    {args} \\\n    \"${{@}}\"\n"
    )
    path = auto / "config"
    path.write_text(script, encoding="utf-8")
    path.chmod(0o755)
