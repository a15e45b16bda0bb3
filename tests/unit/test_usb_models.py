"""The preload store is read without following a link and checked whole (manifests' JSON, every referenced
blob's sha256) before anything is written; the copy is made from exactly what was checked."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from builder.usb import models as usb_models
from builder.usb.errors import UsbError, UsbWriteError
from builder.usb.models import copy_store, read_store

MANIFEST = "manifests/registry.ollama.ai/library/tiny/latest"


def blob(store: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return digest


def make_store(root: Path, name: str = "tiny", weights: bytes = b"weights") -> Path:
    config, layer = blob(root, b'{"model_format":"gguf"}'), blob(root, weights)
    manifest = {"schemaVersion": 2, "config": {"digest": f"sha256:{config}", "size": 23},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{layer}"}]}
    path = root / f"manifests/registry.ollama.ai/library/{name}/latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return root


def refused(store: Path, match: str, names: list[str] | None = None) -> str:
    with pytest.raises(UsbError, match=match) as caught:
        read_store(store, names)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_good_store_is_read_whole(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    checked = read_store(store)
    assert checked.names == ["registry.ollama.ai/library/tiny/latest"]
    assert len(checked.blobs) == 2
    assert checked.manifests["registry.ollama.ai/library/tiny/latest"] == (store / MANIFEST).read_bytes()


def test_not_a_models_dir(tmp_path: Path) -> None:
    (tmp_path / "x/manifests").mkdir(parents=True)
    refused(tmp_path / "x", "not an Ollama models dir")


def test_a_directory_in_blobs_is_a_one_line_error(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    (store / "blobs" / f"sha256-{'a' * 64}").mkdir()  # the old code died with IsADirectoryError
    refused(store, r"blobs/sha256-a{64}: is a directory, not a regular file$")


def test_a_symlinked_blob_is_refused_even_when_its_target_matches(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$...\n")
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    (store / "blobs" / f"sha256-{digest}").symlink_to(secret)  # the old code followed it as root
    refused(store, rf"sha256-{digest}: is a symlink")


def test_a_symlinked_manifest_dir_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    elsewhere = make_store(tmp_path / "other", "evil")
    (store / "manifests/registry.ollama.ai/library/evil").symlink_to(elsewhere / "manifests/registry.ollama.ai"
                                                                      "/library/evil")
    refused(store, r"library/evil: is a symlink")
    refused(store, r"preload.models: evil: .*library/evil: is a symlink", names=["evil"])


def test_symlinked_blobs_dir_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    (store / "blobs").rename(tmp_path / "real-blobs")
    (store / "blobs").symlink_to(tmp_path / "real-blobs")
    refused(store, r"models/blobs: is a symlink")


def test_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    os.mkfifo(store / "blobs" / f"sha256-{'b' * 64}")
    refused(store, r"is a FIFO, not a regular file")


@pytest.mark.parametrize(("text", "problem"), [
    ("not json", r"not JSON"),
    ("[]", r"not an Ollama manifest"),
    ('{"layers": [{"digest": "sha256:' + "0" * 64 + '"}]}', r"config is missing or not an object"),
    ('{"config": {"digest": "sha256:' + "0" * 64 + '"}}', r"layers is missing, empty or not a list"),
    ('{"config": {"digest": "sha256:' + "0" * 64 + '"}, "layers": [{"digest": "md5:00"}]}',
     r"layers\[0\]\.digest 'md5:00' is not sha256:<64 hex digits>"),
    ('{"config": {"digest": "sha256:../../etc"}, "layers": [{}]}', r"config\.digest .* is not sha256"),
])
def test_manifests_must_be_ollama_json(tmp_path: Path, text: str, problem: str) -> None:
    store = make_store(tmp_path / "models")
    (store / MANIFEST).write_text(text)
    message = refused(store, problem)
    assert message.startswith(str(store / MANIFEST) + ": ")


def test_a_referenced_blob_must_exist(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    layer = json.loads((store / MANIFEST).read_text())["layers"][0]["digest"].replace(":", "-")
    (store / "blobs" / layer).unlink()
    refused(store, rf"latest: references {layer}, which is missing")


def test_blob_content_must_match_its_name(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    layer = json.loads((store / MANIFEST).read_text())["layers"][0]["digest"].replace(":", "-")
    (store / "blobs" / layer).write_bytes(b"tampered")
    refused(store, rf"blobs/{layer}: content does not match its sha256 name")


def test_unreferenced_junk_in_blobs_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    (store / "blobs" / "notes.txt").write_text("x")
    refused(store, r"notes.txt: not a sha256-<hex> blob name")


def test_a_huge_manifest_is_not_read_whole(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    with (store / MANIFEST).open("wb") as handle:
        handle.truncate(usb_models.MANIFEST_MAX + 1)
    refused(store, r"larger than 1 MiB")


def test_named_models_take_only_their_manifests_and_blobs(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    make_store(store, "other", b"other weights")
    (store / "blobs" / f"sha256-{'c' * 64}").write_bytes(b"an unrelated, broken blob is not even read")
    chosen = read_store(store, ["tiny"])
    assert chosen.names == ["registry.ollama.ai/library/tiny/latest"]
    manifest = json.loads(chosen.manifests[chosen.names[0]])
    assert set(chosen.blobs) == {d["digest"].replace(":", "-") for d in [manifest["config"], *manifest["layers"]]}
    refused(store, r"preload.models: other:7b: .*other/7b: is missing", names=["other:7b"])
    refused(store, r"'\.\./\.\./x' is not an Ollama model name", names=["../../x"])


def test_copy_is_made_from_what_was_checked(tmp_path: Path) -> None:
    store = make_store(tmp_path / "models")
    checked = read_store(store)
    (store / MANIFEST).write_text("swapped after the check")  # the checked bytes are what gets written
    dest = tmp_path / "dest"
    dest.mkdir()
    copy_store(checked, dest, os.getuid())
    assert json.loads((dest / MANIFEST).read_text())["schemaVersion"] == 2
    assert sorted(p.name for p in (dest / "blobs").iterdir()) == sorted(checked.blobs)
    assert not any(p.is_symlink() for p in dest.rglob("*"))


@pytest.mark.parametrize("swap", ["content", "symlink"])
def test_a_blob_swapped_after_the_check_fails_the_copy(tmp_path: Path, swap: str) -> None:
    store = make_store(tmp_path / "models")
    checked = read_store(store)
    layer = json.loads((store / MANIFEST).read_text())["layers"][0]["digest"].replace(":", "-")
    (store / "blobs" / layer).unlink()
    if swap == "content":
        (store / "blobs" / layer).write_bytes(b"different")
    else:
        (tmp_path / "elsewhere").write_bytes(b"weights")
        (store / "blobs" / layer).symlink_to(tmp_path / "elsewhere")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UsbWriteError, match=rf"{layer}: .*(changed since it was checked)"):
        copy_store(checked, dest, os.getuid())
