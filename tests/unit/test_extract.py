"""Safe extraction of an engine archive: hostile members refused by name, a good one written with
its dropped backends never touching the disk."""

from __future__ import annotations

import os
import re
import stat
import tarfile
from pathlib import Path

import pytest

from builder.errors import UnsafeArchiveError
from builder.image.backends import plan_prune
from builder.image.extract import extract_archive
from tests.fixtures.engine_archive import MTIME, REAL_LAYOUT, Member, d, f, hard, names, sym, write_archive

BASE = [d("bin"), f("bin/ollama", b"#!/bin/sh\n", 0o755), d("lib"), d("lib/ollama")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    dest = tmp_path / "root" / "usr" / "local"
    dest.mkdir(parents=True)
    return dest


HOSTILE = {
    "character device": ([Member("lib/ollama/null", tarfile.CHRTYPE)], "lib/ollama/null", "character device refused"),
    "block device": ([Member("lib/ollama/sda", tarfile.BLKTYPE)], "lib/ollama/sda", "block device refused"),
    "fifo": ([Member("lib/ollama/pipe", tarfile.FIFOTYPE)], "lib/ollama/pipe", "fifo refused"),
    "dotdot": ([f("lib/../../../evil")], "lib/../../../evil", "'..' in the path refused"),
    "absolute": ([f("/etc/evil")], "/etc/evil", "absolute path refused"),
    "symlink out": ([sym("lib/ollama/evil", "../../../../etc")], "lib/ollama/evil", "leads out of the tree"),
    "absolute symlink": ([sym("lib/ollama/evil", "/etc/passwd")], "lib/ollama/evil", "leads out of the tree"),
    "hardlink out": ([hard("lib/ollama/evil", "../../etc/passwd")], "lib/ollama/evil", "'..' in the path refused"),
    "absolute hardlink": ([hard("lib/ollama/evil", "/etc/passwd")], "lib/ollama/evil", "absolute path refused"),
    "hardlink to nothing written": ([hard("lib/ollama/evil", "lib/ollama/missing")], "lib/ollama/evil",
                                    "not a file written before it"),
    # Each link stays inside on its own; together they lead out (s -> the tree root, t -> s/../..).
    "symlink chain": ([sym("lib/ollama/s", "../.."), sym("lib/ollama/t", "s/../..")], "lib/ollama/t",
                      "out of the tree"),
    "write through a symlink": ([sym("lib/ollama/d", "."), f("lib/ollama/d/x")], "lib/ollama/d/x",
                                "path goes through 'd', not a directory"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_refused_by_name(tmp_path: Path, tree: Path, case: str) -> None:
    extra, member, message = HOSTILE[case]
    archive = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", BASE + extra)
    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, tree)
    text = str(caught.value)
    assert text == text.strip() and "\n" not in text
    assert text.startswith(f"ollama-linux-amd64.tar.zst: member {member!r}: ") and message in text, text
    assert caught.value.exit_code == 2
    # Nothing was written outside the tree, and no special file anywhere.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ollama-linux-amd64.tar.zst", "root"]
    for path in tmp_path.rglob("*"):
        mode = path.lstat().st_mode
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), path
    for path in tree.rglob("*"):
        if path.is_symlink():
            assert os.path.realpath(path).startswith(str(tree)), path


def test_hostile_member_refused_even_in_a_pruned_backend(tmp_path: Path, tree: Path) -> None:
    archive = write_archive(tmp_path / "o.tar.zst", [*BASE, d("lib/ollama/cuda_v13"),
                                                     hard("lib/ollama/cuda_v13/x", "../../../../etc/shadow")])
    plan = plan_prune(["lib/ollama/cuda_v13/x"], (), "vulkan", None)
    message = "'lib/ollama/cuda_v13/x': hard link target: '..' in the path"
    with pytest.raises(UnsafeArchiveError, match=re.escape(message)):
        extract_archive(archive, tree, plan.keeps)


def test_sparse_member_refused(tmp_path: Path, tree: Path) -> None:
    archive = write_archive(tmp_path / "o.tar.zst", [*BASE, Member("lib/ollama/holes", tarfile.GNUTYPE_SPARSE)])
    with pytest.raises(UnsafeArchiveError, match="'lib/ollama/holes': sparse file refused"):
        extract_archive(archive, tree)


def test_not_an_archive(tmp_path: Path, tree: Path) -> None:
    archive = tmp_path / "ollama-linux-amd64.tar.zst"
    archive.write_bytes(b"<html>404</html>\n")
    with pytest.raises(UnsafeArchiveError, match=r"^ollama-linux-amd64.tar.zst: not a readable tar archive \("):
        extract_archive(archive, tree)


def test_good_archive_extracted_with_pruning(tmp_path: Path, tree: Path) -> None:
    members = [*REAL_LAYOUT, f("lib/ollama/suid", b"s", 0o4775), hard("lib/ollama/libggml-cpu-alias.so",
                                                                   "lib/ollama/libggml-cpu-haswell.so")]
    archive = write_archive(tmp_path / "ollama-linux-amd64.tar.zst", members)
    plan = plan_prune(names(members), ("nvidia",), "vulkan", "550.163.01")
    result = extract_archive(archive, tree, plan.keeps)
    assert result.members == names(members)
    assert not (tree / "lib/ollama/cuda_v13").exists() and not (tree / "lib/ollama/vulkan").exists()
    assert (tree / "lib/ollama/cuda_v12/libggml-cuda.so").read_bytes() == b"lib/ollama/cuda_v12/libggml-cuda.so"
    assert result.skipped_bytes == sum(len(m.name) for m in REAL_LAYOUT if m.kind == tarfile.REGTYPE
                                       and m.name.startswith(("lib/ollama/cuda_v13/", "lib/ollama/vulkan/")))
    ollama = tree / "bin/ollama"
    assert stat.S_IMODE(ollama.stat().st_mode) == 0o755 and ollama.stat().st_mtime == MTIME
    assert stat.S_IMODE((tree / "lib/ollama/suid").stat().st_mode) == 0o755  # no setuid, no group write
    assert os.readlink(tree / "lib/ollama/libggml-base.so") == "libggml-base.so.0"
    assert (tree / "lib/ollama/libggml-base.so").read_bytes() == b"lib/ollama/libggml-base.so.0.0.0"
    assert os.readlink(tree / "lib/ollama/cuda_v12/libcublas.so.12") == "libcublas.so.12.8.4.1"
    alias = tree / "lib/ollama/libggml-cpu-alias.so"
    assert alias.stat().st_ino == (tree / "lib/ollama/libggml-cpu-haswell.so").stat().st_ino
    assert (tree / "lib/ollama/cuda_v12").stat().st_mtime == MTIME
    written = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir() or p.is_symlink())
    assert written == sorted(result.files + result.links)


def test_existing_directories_keep_their_mode(tmp_path: Path, tree: Path) -> None:
    (tree / "lib").mkdir(mode=0o2775)
    os.chmod(tree / "lib", 0o2775)
    archive = write_archive(tmp_path / "o.tar.zst", BASE)
    extract_archive(archive, tree)
    assert stat.S_IMODE((tree / "lib").stat().st_mode) == 0o2775
    assert stat.S_IMODE((tree / "lib/ollama").stat().st_mode) == 0o755


def test_later_member_replaces_a_file_not_a_directory(tmp_path: Path, tree: Path) -> None:
    archive = write_archive(tmp_path / "o.tar.zst", [*BASE, f("bin/ollama", b"second", 0o755)])
    extract_archive(archive, tree)
    assert (tree / "bin/ollama").read_bytes() == b"second"
    archive = write_archive(tmp_path / "o.tar.zst", [*BASE, f("lib/ollama")])
    with pytest.raises(UnsafeArchiveError, match="'lib/ollama': would replace a directory"):
        extract_archive(archive, tree)


def test_plain_tar_and_double_layout(tmp_path: Path, tree: Path) -> None:
    archive = write_archive(tmp_path / "o.tar", [*BASE, f("lib/ollama/TEST-DOUBLE")], zstd=False)
    result = extract_archive(archive, tree)
    assert sorted(result.files) == ["bin/ollama", "lib/ollama/TEST-DOUBLE"]
