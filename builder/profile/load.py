"""Profiles: YAML files under config/profiles, layered with `extends:`, parsed once into the schema's
frozen dataclasses.

Every value is checked here so later stages can trust it; errors read `file: field: what is wrong`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any, Union

from builder.errors import ProfileError
from builder.files import ROOT
from builder.image.escape import describe, first_control
from builder.profile.checks import VERSION, check_profile
from builder.profile.schema import Profile
from builder.profile.sshkeys import read_authorized_keys
from builder.profile.strict_yaml import read_yaml, shown

PROFILES_DIR = ROOT / "config" / "profiles"
MAX_STRING = 4096


def resolve_profile_path(name_or_path: str) -> Path:
    """A bare name means config/profiles/NAME.yaml; anything with a slash or suffix is a path."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
    else:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ProfileError(f"{shown(path)}: no such profile (known: {known})")
    return path.resolve()


def load_profile(name_or_path: str, authorized_keys: Path | None = None) -> Profile:
    """The validated profile; `authorized_keys` (build.py --authorized-keys) replaces its SSH keys."""
    path = resolve_profile_path(name_or_path)
    data = _load_layered(path, seen=())
    preset = {"name": path.stem, "source": str(path)}
    try:
        profile: Profile = _build(Profile, data, "", preset)
    except _FieldError as exc:
        raise ProfileError(f"{shown(path)}: {shown(exc.field)}: {shown(exc.message)}") from None
    check_profile(profile, path)
    return profile if authorized_keys is None else with_authorized_keys(profile, authorized_keys)


def _load_layered(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise ProfileError(f"{shown(path)}: extends: cycle ({shown(chain)})")
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{shown(path)}: top level must be a mapping, not {type(raw).__name__}")
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str) or first_control(parent_name) is not None:
        raise ProfileError(f"{shown(path)}: extends: must be a profile name")
    parent_path = (PROFILES_DIR / f"{parent_name}.yaml") if "/" not in parent_name else path.parent / parent_name
    if not parent_path.is_file():
        raise ProfileError(f"{shown(path)}: extends: no profile named {parent_name!r}")
    base = _load_layered(parent_path.resolve(), (*seen, path))
    # `release` is a property of each file, never inherited: a test profile must say so itself.
    base.pop("release", None)
    return _merge(base, raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _FieldError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


def _build(cls: type[Any], data: Any, prefix: str, preset: dict[str, Any] | None = None) -> Any:
    """`preset`: fields the loader fills (never keys of the file); checked like any other value."""
    where = prefix.rstrip(".") or "(top)"
    if not isinstance(data, dict):
        raise _FieldError(where, f"must be a mapping, not {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(preset or {})
    unknown = sorted(set(data) - names)
    if unknown:
        raise _FieldError(f"{prefix}{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(names))})")
    items = {**data, **(preset or {})}
    kwargs = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in items.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = re.findall(r"'(\w+)'", str(exc))
        raise _FieldError(f"{prefix}{missing[0] if missing else ''}".rstrip("."), "required") from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise _FieldError(where, f"must be a list, not {_kind(value)}")
        return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _FieldError(where, f"must be a mapping, not {_kind(value)}")
        return {str(_convert(str, k, where)): _convert(str, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(where, f"must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(where, f"must be an integer, not {value!r}")
        return value
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _FieldError(where, f"must be a string, not {_kind(value)}")
        text = str(value)
        # One check for every string field: no value may start a new line (or look like one) in the
        # shell, unit, env and Caddy files it is rendered into.
        bad = first_control(text)
        if bad is not None:
            raise _FieldError(where, f"control character {describe(bad)} in {text[:60]!r}")
        if len(text) > MAX_STRING:
            raise _FieldError(where, f"longer than {MAX_STRING} characters")
        return text
    raise _FieldError(where, f"unsupported type {hint}")  # pragma: no cover - schema bug


def with_authorized_keys(profile: Profile, authorized_keys: Path) -> Profile:
    """The profile with `authorized_keys` (OpenSSH public keys only) for the admin user; SSH must be on."""
    if not profile.ssh.enabled:
        raise ProfileError(f"{profile.source}: ssh.enabled: --authorized-keys given but SSH is off")
    if not authorized_keys.is_file():
        raise ProfileError(f"--authorized-keys: {authorized_keys}: no such file")
    read_authorized_keys(authorized_keys)  # only public keys: errors name the file and line
    return replace(profile, ssh=replace(profile.ssh, authorized_keys=str(authorized_keys.resolve())))


def with_image_version(profile: Profile, version: str) -> Profile:
    """The profile as release `version` (image.version, checked as the loader checks it): the upgrade
    proof builds its release B so. The package layer's key does not read the version, so B reuses A's."""
    if not VERSION.fullmatch(version):
        raise ProfileError(f"{profile.source}: image.version: {version!r} is not a version")
    return replace(profile, image=replace(profile.image, version=version))
