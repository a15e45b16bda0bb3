"""The in-image Python: one package where Debian's python3 finds it, one small entry point per
program, and program, module and test sharing one name."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures.gpu import CHROOT, PACKAGE_PARENT

REPO = CHROOT.parent
PROGRAM_DIRS = (CHROOT / "usr/bin", CHROOT / "usr/lib/neuraldrive")
# The seed's short commands are forms of the `neuraldrive` command.
ALIASES = {"ollama-models", "ollama-status", "ollama-unload"}
ENTRY_POINT = re.compile(r"#!/usr/bin/python3 -I\n"
                         r"from neuraldrive\.(\w+) import (\w+)\n\n"
                         r"raise SystemExit\(\2\((.*)\)\)\n")


def python_programs() -> list[Path]:
    return sorted(p for d in PROGRAM_DIRS for p in d.iterdir()
                  if p.is_file() and p.read_text(errors="replace").startswith("#!/usr/bin/python3"))


def test_every_program_is_an_entry_point_into_its_namesake_module() -> None:
    programs = python_programs()
    assert len(programs) >= 10
    for program in programs:
        match = ENTRY_POINT.fullmatch(program.read_text())
        assert match, f"{program.name}: not the three-line entry point"
        module, function, args = match.groups()
        if program.name in ALIASES:
            assert (module, function, args) == ("neuraldrive", "alias_main", f'"{program.name}"'), program.name
        else:
            assert (module, function, args) == (program.name.replace("-", "_"), "main", ""), program.name
        assert (PACKAGE_PARENT / "neuraldrive" / f"{module}.py").is_file(), module
        assert (REPO / "tests/unit" / f"test_{module}.py").is_file(), f"no tests/unit/test_{module}.py"


def test_no_bytecode_in_the_image_sources() -> None:
    """The renderer copies includes.chroot as it is: bytecode there would land in the image."""
    found = [p for p in CHROOT.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
    assert not found, found
