"""README's layout is the tree: every room of the repository and of builder/ has its line, and every
line names a room that exists."""

from __future__ import annotations

import re
from pathlib import Path

from builder.files import ROOT

# Entries that are not rooms: project metadata, and what builds, tools and git leave (.dockerignore's list).
NOT_ROOMS = {"README.md", "pyproject.toml", "requirements.txt", ".gitignore", ".dockerignore", ".git", "out", "cache",
             "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", ".benchmarks", ".venv",
             "__init__.py"}


def layout_rooms() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout\n", 1)[1].split("```\n", 2)[1]
    return [match[1] for line in block.splitlines() if (match := re.match(r"^ *(\S+)\s{2,}\S", line))]


def rooms(directory: Path) -> set[str]:
    return {entry.name + ("/" if entry.is_dir() else "") for entry in directory.iterdir()
            if entry.name not in NOT_ROOMS}


def test_every_room_has_a_line_and_every_line_a_room() -> None:
    listed = layout_rooms()
    assert len(listed) == len(set(listed))
    assert set(listed) == rooms(ROOT) | rooms(ROOT / "builder")

