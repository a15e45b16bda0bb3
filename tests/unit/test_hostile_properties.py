"""Property tests (hypothesis): hostile strings in every string field of a profile.

For every string field the schema has (found by walking the Profile dataclasses, so a new field is
covered without touching this file), random text and near-valid values with one hostile character
either load or give a one-line ProfileError, never another exception; when accepted, the rendered
tree (units, env files, Caddyfile, hooks, auto/config, …) holds no control character, and the env
files read back, as systemd reads them, to exactly the profile's values.
Derandomized and without an example database: every run tries the same examples.
"""

from __future__ import annotations

import copy
import dataclasses
import shlex
import tempfile
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any, Union

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from builder.errors import ProfileError
from builder.image.escape import first_control
from builder.image.render import render_tree
from builder.profile import Profile, load_profile

INCLUDES = "config/includes.chroot_after_packages"
LOADER_SET = {"name", "source"}
SETTINGS = settings(derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# A profile that is valid and sets every string field (so each one can be replaced).
BASE: dict[str, Any] = {
    "extends": "cpu",
    "release": False,
    "description": "fuzz base",
    "ollama": {
        "archive": {"version": "1.2.3", "url": "https://example.org/ollama-linux-amd64.tar.zst",
                    "sha256": "0" * 64},
        "kv_cache_type": "q8_0",
        "cuda_visible_devices": "0,1",
        "extra_env": {"FOO": "bar"},
        "instances": [{"name": "a", "port": 11500, "gpus": "1", "models_dir": "/var/lib/neuraldrive/m"}],
    },
    "llama_server": {"enabled": True, "model": "tiny:latest", "flash_attn": "auto"},
    "preload": {"store": "store", "models": []},
    "packages": ["curl"],
}
# Hostile characters: C0, DEL, C1, line/paragraph separators, bidi and zero-width format characters,
# a lone surrogate, and what each target syntax treats specially.
NASTY = (
    [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\u202e", "\u200b", "\ufeff",
                                     "\ud800", "\U000e0001"]
    + list("'\"$`\\%{};&|<>#= \t*?!~") + ["é", "µ", "\u00a0", "\U0001f600", "ℌ"]
)


def _string_paths(cls: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place a string sits in the schema: a field, a list item ([0]), a mapping key or value."""
    paths: list[tuple[Any, ...]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not prefix and f.name in LOADER_SET:
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) in (Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        here = (*prefix, f.name)
        if hint is str:
            paths.append(here)
        elif dataclasses.is_dataclass(hint):
            paths += _string_paths(hint, here)
        elif origin is tuple and args[0] is str:
            paths.append((*here, 0))
        elif origin is tuple and dataclasses.is_dataclass(args[0]):
            paths += _string_paths(args[0], (*here, 0))
        elif origin is dict:
            paths += [(*here, "<key>"), (*here, "<value>")]
    return paths


STRING_PATHS = _string_paths(Profile)


def _container(doc: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = doc
    for i, part in enumerate(path[:-1]):
        if isinstance(part, int):
            while len(node) <= part:
                node.append({})
            node = node[part]
        else:
            node = node.setdefault(part, [] if isinstance(path[i + 1], int) else {})
    return node


def _base_value(path: tuple[Any, ...]) -> str:
    node: Any = BASE
    for part in path:
        if part in ("<key>", "<value>"):
            key, value = next(iter(node.items()))
            return key if part == "<key>" else value
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return "x"
    return node if isinstance(node, str) else "x"


def with_value(path: tuple[Any, ...], value: str) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    parent = _container(doc, path)
    last = path[-1]
    if last in ("<key>", "<value>"):
        key, old = next(iter(parent.items()))
        parent.clear()
        parent.update({value: old} if last == "<key>" else {key: value})
    elif isinstance(last, int):
        parent[:] = [value]
    else:
        parent[last] = value
    return doc


def hostile_values(path: tuple[Any, ...]) -> st.SearchStrategy[str]:
    base = _base_value(path)
    injected = st.builds(lambda pos, char: base[:pos] + char + base[pos:],
                         st.integers(min_value=0, max_value=len(base)), st.sampled_from(NASTY))
    random_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()),
                          max_size=24)
    return st.one_of(injected, random_text)


# Fields that take nearly any printable text, so that hostile-but-printable values get rendered.
FREE_PATHS = [p for p in STRING_PATHS if p in {("description",), ("ollama", "extra_env", "<value>"),
                                               ("debian", "mirrors", "chroot"), ("debian", "mirrors", "security"),
                                               ("ollama", "archive", "url"), ("preload", "store")}]
SYNTAX = [*"'\"$`\\%{};&|<>#=*?!~ ", "é", "\u00a0", "\U0001f600"]


@st.composite
def hostile_profiles(draw: st.DrawFn, paths: list[tuple[Any, ...]] = STRING_PATHS,
                     printable: bool = False) -> tuple[tuple[Any, ...], str, dict[str, Any]]:
    path = draw(st.sampled_from(paths))
    if printable:
        base = _base_value(path)
        chars = draw(st.lists(st.sampled_from(SYNTAX), min_size=1, max_size=6))
        value = base + "".join(chars) if path[0] == "debian" or path[-1] == "url" else "".join(chars) + base
    else:
        value = draw(hostile_values(path))
    return path, value, with_value(path, value)


def load(doc: dict[str, Any], directory: Path) -> Profile | None:
    (directory / "store").mkdir(exist_ok=True)
    path = directory / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=False), encoding="utf-8")
    try:
        return load_profile(str(path))
    except ProfileError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert first_control(message) is None, ascii(message)
        return None


def systemd_env(text: str) -> dict[str, str]:
    """EnvironmentFile= as systemd reads it: the state machine of src/basic/env-file.c."""
    out: dict[str, str] = {}
    state, key, value = "pre_key", "", ""
    for c in text + "\n":
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif not c.isspace():
                state, key, value = "key", c, ""
        elif state == "key":
            if c in "\n\r":
                state = "pre_key"
            elif c == "=":
                state, key = "pre_value", key.rstrip()
            else:
                key += c
        elif state in ("pre_value", "value"):
            if c in "\n\r":
                out[key] = value.rstrip() if state == "value" else value
                state = "pre_key"
            elif c == "'" and state == "pre_value":
                state = "single"
            elif c == '"' and state == "pre_value":
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif state == "value" or not c.isspace():
                state, value = "value", value + c
        elif state == "value_escape":
            state = "value"
            if c not in "\n\r":
                value += c
        elif state == "single":
            state, value = ("pre_value", value) if c == "'" else ("single", value + c)
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            value += c if c in '"\\`$' else ("" if c == "\n" else "\\" + c)
        elif state == "comment" and c in "\n\r":
            state = "pre_key"
    return out


def assert_no_control(tree: Path) -> int:
    scanned = 0
    for path in tree.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8")
        for char in text:
            if char not in "\n\t" and unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
                raise AssertionError(f"{path.relative_to(tree)}: raw U+{ord(char):04X}")
        scanned += 1
    return scanned


def test_every_string_field_is_fuzzed() -> None:
    names = {".".join(str(p) for p in path) for path in STRING_PATHS}
    for expected in ("description", "image.hostname", "ollama.keep_alive", "ollama.extra_env.<key>",
                     "ollama.extra_env.<value>", "ollama.instances.0.models_dir", "packages.0",
                     "debian.mirrors.chroot", "ssh.authorized_keys", "gpu.amd.backend",
                     "llama_server.model", "llama_server.flash_attn"):
        assert expected in names
    assert len(STRING_PATHS) >= 25


@settings(SETTINGS, max_examples=300)
@given(hostile_profiles())
def test_hostile_strings_load_or_fail_in_one_line(case: tuple[tuple[Any, ...], str, dict[str, Any]]) -> None:
    path, value, doc = case
    with tempfile.TemporaryDirectory() as tmp:
        profile = load(doc, Path(tmp))
    event("refused" if profile is None else "accepted")
    if profile is not None:
        assert first_control(value) is None, f"{path}: accepted {value!a}"


@settings(SETTINGS, max_examples=120)
@given(st.one_of(hostile_profiles(), hostile_profiles(FREE_PATHS), hostile_profiles(FREE_PATHS, printable=True)))
def test_accepted_values_render_without_raw_control_characters(
        case: tuple[tuple[Any, ...], str, dict[str, Any]]) -> None:
    _path, _value, doc = case
    with tempfile.TemporaryDirectory() as tmp:
        profile = load(doc, Path(tmp))
        event("refused" if profile is None else "accepted and rendered")
        if profile is None:
            return
        tree = render_tree(profile, Path(tmp) / "tree", [])
        assert assert_no_control(tree) > 20
        env = systemd_env((tree / INCLUDES / "etc/neuraldrive/ollama.conf").read_text(encoding="utf-8"))
        assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
        assert {k: env[k] for k in profile.ollama.extra_env} == profile.ollama.extra_env
        assert env["OLLAMA_KEEP_ALIVE"] == profile.ollama.keep_alive
        script = (tree / "auto/config").read_text(encoding="utf-8").replace("\\\n", "")  # line continuations
        words = shlex.split(script, comments=True)
        assert words[words.index("--mirror-chroot") + 1] == profile.debian.mirrors.chroot
        assert words[words.index("--mirror-chroot-security") + 1] == profile.debian.mirrors.security
        hook = (tree / "config/hooks/live/05-instances.hook.chroot").read_text(encoding="utf-8")
        body = hook.split("<<'CONF'\n", 1)[1].split("\nCONF\n", 1)[0]
        assert systemd_env(body)["OLLAMA_MODELS"] == (profile.ollama.instances[0].models_dir
                                                      or "/var/lib/neuraldrive/instances/a/models/")
        llama = systemd_env((tree / INCLUDES / "etc/neuraldrive/llama-server.conf").read_text(encoding="utf-8"))
        assert llama["NEURALDRIVE_LLAMA_MODEL"] == profile.llama_server.model
        assert llama["NEURALDRIVE_LLAMA_FLASH_ATTN"] == profile.llama_server.flash_attn


@settings(SETTINGS, max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_as_a_profile_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(b"extends: cpu\n" + data)
        try:
            load_profile(str(path))
        except ProfileError as exc:
            assert first_control(str(exc)) is None, ascii(str(exc))


@pytest.mark.parametrize("value", ["a b", "it's", 'say "hi"', "$HOME", "back\\slash", "%n", "", "a=b", "#x", " lead"])
def test_the_env_reader_used_above_agrees_with_the_filter(value: str) -> None:
    from builder.image.escape import envfile

    assert systemd_env(f"K={envfile(value)}\n") == {"K": value}
