"""Writing the stick: through one fd, refused for a target of another size, the ISO's EFI partition read with
sfdisk, and (root with loop devices only; NEURALDRIVE_SKIP_LOOP=1 skips them) a real write of a disk-image file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import build
from builder.proof.ollama_double import write_model
from builder.usb import write as usb
from builder.usb.errors import UsbError
from builder.usb.layout import PartitionPlan, esp_extent, plan_layout
from tests.fixtures.usb import ESP, GiB, MiB, fake_iso


def test_writing_goes_through_the_fd(tmp_path: Path) -> None:
    iso = tmp_path / "fake.iso"
    iso.write_bytes(os.urandom(3 * MiB + 5))
    target = tmp_path / "target"
    target.write_bytes(b"\xff" * 4096)
    fd = os.open(target, os.O_RDWR)
    try:
        os.ftruncate(fd, 2 * GiB)
        layout = plan_layout(2 * GiB, iso.stat().st_size, (2048, 2048))
        digest, written, _ = usb.write_iso(iso, fd)
        assert written == iso.stat().st_size and digest == hashlib.sha256(iso.read_bytes()).hexdigest()
        assert usb.read_back_sha256(fd, written) == digest
        usb.write_partition_table(fd, layout)
    finally:
        os.close(fd)
    with target.open("rb") as handle:
        head = handle.read(1024)
        handle.seek(2 * GiB - 33 * 512)
        backup = handle.read(33 * 512)
    assert head[446:512] == layout.mbr_entries + b"\x55\xaa" and head[512:1024] == bytes(512)
    assert backup == bytes(33 * 512)


def test_a_target_of_another_size_is_refused_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"old")
    layout = plan_layout(2 * GiB, 40 * MiB, ESP)
    fd = os.open(target, os.O_RDWR)
    try:
        with pytest.raises(UsbError, match="not the 2147483648 the layout was planned for"):
            usb.write_stick(fake_iso(tmp_path), fd, target, layout, None, None)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"old"


@pytest.mark.skipif(not shutil.which("sfdisk"), reason="needs sfdisk")
def test_esp_extent_is_read_from_the_iso_file(tmp_path: Path) -> None:
    assert esp_extent(synthetic_iso(tmp_path)) == (2048, 4096)
    with pytest.raises(UsbError, match=r"cannot read the ISO's partition table|no EFI system partition"):
        esp_extent(tmp_path / "missing.iso")


root_only = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("sfdisk") or not shutil.which("losetup")
                               or os.environ.get("NEURALDRIVE_SKIP_LOOP") == "1",
                               reason="needs root, sfdisk and loop devices (NEURALDRIVE_SKIP_LOOP=1 skips)")


def synthetic_iso(tmp_path: Path) -> Path:
    """A stand-in hybrid image: 40 MiB with a GPT whose backup header sits at its own end, as xorriso writes."""
    iso = tmp_path / "fake.iso"
    with iso.open("wb") as handle:
        handle.truncate(40 * MiB)
    subprocess.run(["sfdisk", "-q", str(iso)], input="label: gpt\nstart=2048, size=4096, type=uefi\n",
                   text=True, check=True)
    with iso.open("r+b") as handle:
        handle.seek(4 * MiB)
        handle.write(os.urandom(MiB))
    return iso


@root_only
@pytest.mark.parametrize("encrypt", [False, True])
def test_write_an_image_file(tmp_path: Path, encrypt: bool) -> None:
    iso = synthetic_iso(tmp_path)
    models = tmp_path / "models"
    write_model(models, "tiny:latest", size=4096)
    # write_model makes a sparse all-zero weights blob named after the model: give it real content.
    for blob in (models / "blobs").iterdir():
        if blob.stat().st_size == 4096:
            data = blob.read_bytes()
            blob.rename(models / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}")
            manifest = next((models / "manifests").rglob("latest"))
            text = json.loads(manifest.read_text())
            text["layers"][0]["digest"] = f"sha256:{hashlib.sha256(data).hexdigest()}"
            manifest.write_text(json.dumps(text))
    image = tmp_path / "stick.img"
    args = ["usb", "--iso", str(iso), "--image", str(image), "--size", "2G", "--models", str(models)]
    if encrypt:
        secret = tmp_path / "pass"
        secret.write_text("correct horse battery\n")
        args += ["--encrypt", "--passphrase-file", str(secret)]
    result = CliRunner().invoke(build.cli, args)
    assert result.exit_code == 0, result.output
    assert image.stat().st_size == 2 * GiB
    # The image region is the ISO, except the partition tables that gained the persistence entry.
    with image.open("rb") as written:
        written.seek(MiB)
        assert written.read(38 * MiB) == iso.read_bytes()[MiB:39 * MiB]
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    # Debian's hybrid layout: partition 1 is the ISO file system from sector 0 (live-boot's medium),
    # 2 the EFI image the ISO's GPT pointed at, 3 persistence; no GPT left to confuse firmware.
    assert table["label"] == "dos"
    medium, esp, persistence = table["partitions"]
    assert (medium["start"], medium["size"], medium.get("bootable")) == (0, 40 * MiB // 512, True)
    assert (esp["start"], esp["size"], esp["type"]) == (2048, 4096, "ef")
    assert (persistence["start"] * 512, persistence["type"]) == (40 * MiB, "83")
    assert persistence["start"] + persistence["size"] <= 2 * GiB // 512 - 33
    with image.open("rb") as written:
        written.seek(512)
        assert written.read(8) != b"EFI PART"
        written.seek(2 * GiB - 33 * 512)
        assert written.read(33 * 512) == bytes(33 * 512)
    plan = PartitionPlan(iso_size=iso.stat().st_size, start=persistence["start"] * 512,
                             size=persistence["size"] * 512)
    with usb.loop_device(image, plan) as device:
        if encrypt:
            # Opening needs device-mapper, which build hosts may lack; the booted image test unlocks it.
            probe = subprocess.run(["cryptsetup", "isLuks", "--type", "luks2", device], check=False)
            assert probe.returncode == 0
            assert usb.luks_passphrase_opens(device, b"correct horse battery")
            assert not usb.luks_passphrase_opens(device, b"wrong horse battery")
        else:
            check_filesystem(device, tmp_path)


def check_filesystem(device: str, tmp_path: Path) -> None:
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", device], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert label == "persistence"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", device, str(mnt)], check=True)
    try:
        assert (mnt / "persistence.conf").read_text() == "/var/lib/neuraldrive bind\n/var/log/journal bind\n"
        assert (mnt / "var/log/journal").stat().st_mode & 0o7777 == 0o2755
        models = mnt / "var/lib/neuraldrive/models"
        assert models.stat().st_uid == 901
        assert list((models / "manifests").rglob("latest"))
        assert all(p.stat().st_uid == 901 for p in models.rglob("*"))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@root_only
def test_profile_preload_reaches_the_stick(tmp_path: Path) -> None:
    iso = synthetic_iso(tmp_path)
    store = tmp_path / "store"
    write_model(store, "tiny:latest", size=4096)
    write_model(store, "big:latest", size=8192)
    for blob in (store / "blobs").iterdir():  # give the sparse weights real, matching names
        if blob.stat().st_size in (4096, 8192):
            data = os.urandom(blob.stat().st_size)
            digest = hashlib.sha256(data).hexdigest()
            for manifest in (store / "manifests").rglob("latest"):
                manifest.write_text(manifest.read_text().replace(blob.name.replace("-", ":"), f"sha256:{digest}"))
            blob.unlink()
            (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    profile = tmp_path / "stick.yaml"
    profile.write_text(f"extends: test\npreload:\n  store: {store.name}\n  models: [tiny]\n")
    image = tmp_path / "stick.img"
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(iso), "--image", str(image), "--size", "2G",
                                            "--profile", str(profile)])
    assert result.exit_code == 0, result.output
    assert "models: 1" in result.output
    plan = PartitionPlan(iso_size=iso.stat().st_size, start=40 * MiB, size=(2 * GiB - 41 * MiB))
    with usb.loop_device(image, plan) as device:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "ro", device, str(mnt)], check=True)
        try:
            copied = mnt / "var/lib/neuraldrive/models/manifests/registry.ollama.ai/library"
            assert sorted(p.name for p in copied.iterdir()) == ["tiny"]
            assert not any(p.is_symlink() for p in (mnt / "var/lib/neuraldrive/models").rglob("*"))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
