"""Package the Ollama-API test double like an official Ollama release asset.

Produces `ollama-linux-amd64.tar.zst` with the official layout (`bin/ollama`,
`lib/ollama/`) so the image build can install it exactly as it would the real
archive. The output is byte-for-byte reproducible (fixed metadata, sorted
entries, deterministic zstd), so its sha256 can be pinned like a real one.

Usage: python3 -m builder.proof.ollama_double.package OUTDIR
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from builder.files import sha256_file

ARCHIVE_NAME = "ollama-linux-amd64.tar.zst"
SCRIPT = Path(__file__).resolve().parent / "ollama"
LIB = Path(__file__).resolve().parent / "lib" / "ollama"
# Any constant works; 2024-01-01T00:00:00Z keeps tar listings plausible.
FIXED_MTIME = 1704067200

NOTICE = b"""\
This is NOT Ollama.

This archive is the NeuralDrive Ollama-API test double, packaged in the
layout of an official Ollama release (bin/ollama, lib/ollama/) so that image
builds and tests can run without downloading the real Ollama. bin/ollama is a
small python3 script that fakes Ollama's HTTP API and CLI; it runs no models.
Its modules are in lib/ollama/testdouble/; lib/ollama/llama-server (modules
in lib/ollama/llamadouble/) stands in for llama.cpp's server: the child it
starts per loaded model and the appliance's llama.cpp engine (also a python3
script, not llama.cpp).
"""


# The real archive's GPU backend directories (lib/ollama/cuda_v12, cuda_v13, vulkan), as small
# placeholder files: the image build's backend pruning then acts on the double exactly as on the
# real layout, and an image test can see what a profile ships.
BACKENDS = ("cuda_v12/libggml-cuda.so", "cuda_v13/libggml-cuda.so", "vulkan/libggml-vulkan.so")


def _backend_members() -> list[tuple[str, bytes | None, int]]:
    members: list[tuple[str, bytes | None, int]] = []
    for backend in BACKENDS:
        directory, _, _ = backend.partition("/")
        text = f"NeuralDrive test double: placeholder for Ollama's {directory} backend (not a library)\n"
        members += [(f"lib/ollama/{directory}", None, 0o755), (f"lib/ollama/{backend}", text.encode(), 0o644)]
    return members


def _members() -> list[tuple[str, bytes | None, int]]:
    """(archive path, content or None for a directory, mode), sorted."""
    members: list[tuple[str, bytes | None, int]] = [
        ("bin", None, 0o755),
        ("bin/ollama", SCRIPT.read_bytes(), 0o755),
        ("lib", None, 0o755),
        ("lib/ollama", None, 0o755),
        ("lib/ollama/TEST-DOUBLE", NOTICE, 0o644),
        *_backend_members(),
    ]
    for path in sorted(LIB.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        name = "lib/ollama/" + path.relative_to(LIB).as_posix()
        if path.is_dir():
            members.append((name, None, 0o755))
        else:
            members.append((name, path.read_bytes(), 0o755 if path.stat().st_mode & 0o111 else 0o644))
    return sorted(members, key=lambda m: m[0])


def _tarinfo(name: str, content: bytes | None, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if content is None else tarfile.REGTYPE
    info.size = 0 if content is None else len(content)
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_tar(path: Path) -> None:
    """Uncompressed ustar with fully normalised metadata."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content, mode in _members():
            data = None if content is None else io.BytesIO(content)
            tar.addfile(_tarinfo(name, content, mode), data)


def build_archive(dest_dir: Path) -> Path:
    """Build dest_dir/ARCHIVE_NAME atomically and return its path."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / ARCHIVE_NAME
    # Temp files live in dest_dir so os.replace() is an atomic rename.
    fd_tar, tmp_tar = tempfile.mkstemp(prefix=".ollama-", suffix=".tar", dir=dest_dir)
    fd_zst, tmp_zst = tempfile.mkstemp(prefix=".ollama-", suffix=".tar.zst", dir=dest_dir)
    os.close(fd_tar)
    os.close(fd_zst)
    try:
        write_tar(Path(tmp_tar))
        subprocess.run(
            ["zstd", "-q", "-19", "--no-progress", "-f", tmp_tar, "-o", tmp_zst],
            check=True,
        )
        os.chmod(tmp_zst, 0o644)
        os.replace(tmp_zst, final)
    finally:
        for leftover in (tmp_tar, tmp_zst):
            Path(leftover).unlink(missing_ok=True)
    return final


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m builder.proof.ollama_double.package OUTDIR", file=sys.stderr)
        return 2
    archive = build_archive(Path(args[0]))
    print(f"{sha256_file(archive)}  {archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
