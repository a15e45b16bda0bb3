"""One escaping filter per syntax a profile value can land in (registered in render.py's jinja env).

Each filter refuses control characters outright (the profile loader already does; a filter never
trusts that) and returns text that the target parser reads back as exactly the value:

| filter     | target                                                                     |
|------------|----------------------------------------------------------------------------|
| `sh`       | POSIX shell word (hooks, in-image scripts): shlex.quote                    |
| `envfile`  | value of a KEY=VALUE line read by systemd's EnvironmentFile= (and by `.`)  |
| `unit`     | value of a systemd unit setting (Description=, OnUnitActiveSec=, …)        |
| `unit_arg` | one argument of a unit's ExecStart= command line                           |
| `caddy`    | one Caddyfile token                                                        |
| `num`      | an integer, anywhere (refuses anything else, bool included)                |
| `word`     | a value validated to a safe charset (package, host or profile name)        |
"""

from __future__ import annotations

import re
import shlex
import unicodedata

from builder.errors import TreeError

# Cc: C0, DEL, C1 (NEL U+0085 included); Cf: bidi overrides, zero-width and other format characters;
# Zl/Zp: U+2028/U+2029; Cs: lone surrogates (cannot even be written as UTF-8).
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:+~@/-]*")


def first_control(text: str) -> str | None:
    """The first control, format or line-separator character in `text`, if any."""
    for char in text:
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            return char
    return None


def describe(char: str) -> str:
    return f"U+{ord(char):04X}"


def _text(value: object, syntax: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TreeError(f"{syntax} filter: {type(value).__name__} {value!r} is not a string or integer")
    text = str(value)
    bad = first_control(text)
    if bad is not None:
        raise TreeError(f"{syntax} filter: {text!a} holds control character {describe(bad)}")
    return text


def sh(value: object) -> str:
    return shlex.quote(_text(value, "sh"))


def envfile(value: object) -> str:
    """systemd's env-file parser (src/basic/env-file.c) reads quotes like the shell: everything inside
    '…' is literal, and a line only ends at \\n or \\r outside quotes, which _text refuses. So
    shlex.quote's output (bare if safe, else '…' with '"'"' for a quote) means the same to systemd
    and to `. file` in sh, and a safe value is written bare, as before."""
    return shlex.quote(_text(value, "envfile"))


def unit(value: object) -> str:
    """A unit-file setting value: % starts a specifier (doubled), and a backslash at the end of a
    line continues it (refused: no unit value the profile sets needs one)."""
    text = _text(value, "unit")
    if "\\" in text:
        raise TreeError(f"unit filter: {text!r} holds a backslash")
    return text.replace("%", "%%")


def unit_arg(value: object) -> str:
    """One ExecStart= argument: double-quoted with C-style escapes; %% and $$ keep specifiers and
    variable expansion out."""
    text = _text(value, "unit_arg")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def caddy(value: object) -> str:
    """A quoted Caddyfile token. Caddy substitutes {$ENV} and {placeholders} even inside quotes and
    reads a backslash before a quote as an escape, so braces, quotes and backslashes are refused."""
    text = _text(value, "caddy")
    if any(c in text for c in '{}"\\`'):
        raise TreeError(f"caddy filter: {text!r} holds one of {{ }} \" \\ `")
    return f'"{text}"'


def num(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TreeError(f"num filter: {value!r} is not an integer")
    return str(value)


def word(value: object) -> str:
    text = _text(value, "word")
    if not _WORD.fullmatch(text):
        raise TreeError(f"word filter: {text!r} is not a plain word")
    return text


FILTERS = {
    "sh": sh,
    "envfile": envfile,
    "unit": unit,
    "unit_arg": unit_arg,
    "caddy": caddy,
    "num": num,
    "word": word,
}
