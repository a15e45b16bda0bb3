"""Read one profile file as plain YAML data, refusing what a profile never needs.

A SafeLoader subclass: no anchors or aliases (no "billion laughs"), no merge keys, mapping keys must
be strings and unique. Every failure is a ProfileError `file:line: what is wrong`, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from builder.errors import ProfileError

MAX_BYTES = 1 << 20  # a profile is a few hundred bytes; refuse before parsing anything huge
MAX_DEPTH = 32  # profiles nest 4 levels; PyYAML's composer recurses


def shown(path: Path | str) -> str:
    """A path as it can be printed on one line (escapes control characters)."""
    text = str(path)
    return text if text.isprintable() else f"{text!a}"[1:-1]


class _RefusedError(Exception):
    def __init__(self, node_or_mark: Any, message: str) -> None:
        super().__init__(message)
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        self.line = None if mark is None else mark.line + 1
        self.message = message


class ProfileLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases, merge keys, non-string or duplicate keys."""

    depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RefusedError(event.start_mark, "anchors and aliases are not allowed in profiles")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _RefusedError(event.start_mark, f"nested too deeply (more than {MAX_DEPTH} levels)")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _RefusedError(key_node, "merge keys (<<) are not allowed in profiles")
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _RefusedError(key_node, f"mapping key {key!r} is not a string")
            if key in out:
                raise _RefusedError(key_node, f"duplicate key {key!r}")
            out[key] = self.construct_object(value_node, deep=deep)
        return out


def _construct_map(loader: ProfileLoader, node: MappingNode) -> dict[Any, Any]:
    return loader.construct_mapping(node, deep=True)


ProfileLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def read_utf8(path: Path, limit: int, what: str) -> str:
    """A small UTF-8 text file read whole: at most `limit` bytes, else ProfileError naming the file (and
    the line of a byte that is not UTF-8). `what` names what the file should be, for the size error."""
    where = shown(path)
    try:
        with path.open("rb") as stream:
            raw = stream.read(limit + 1)
    except OSError as exc:
        raise ProfileError(f"{where}: cannot read ({exc.strerror})") from None
    if len(raw) > limit:
        raise ProfileError(f"{where}: larger than {limit} bytes: not {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ProfileError(f"{where}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x})") from None


def read_yaml(path: Path) -> Any:
    """The data in `path` (None for an empty file); ProfileError naming file and line otherwise."""
    where = shown(path)
    text = read_utf8(path, MAX_BYTES, "a profile")
    loader = None
    try:
        loader = ProfileLoader(text)  # the reader checks for unprintable characters right here
        return loader.get_single_data()
    except _RefusedError as exc:
        at = "" if exc.line is None else str(exc.line)
        raise ProfileError(f"{where}:{at}: {exc.message}") from None
    except yaml.reader.ReaderError as exc:  # a raw control character in the file itself
        row = text[: exc.position].count("\n") + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ProfileError(f"{where}:{row}: not valid YAML (character U+{char:04X} is not allowed)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = "" if mark is None else f"{mark.line + 1}:"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ProfileError(f"{where}:{at} not valid YAML ({shown(problem)})") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # int("9" * 5000) exceeds Python's digit limit; 1e999 and the like.
        message = " ".join(str(exc).split())[:120]
        raise ProfileError(f"{where}: not valid YAML ({shown(message)})") from None
    finally:
        if loader is not None:
            loader.dispose()

