"""Writing the stick: device safety checks on recorded sysfs/lsblk samples, the partition plan, and
a real write of a disk-image file (root only: loop devices, mkfs, cryptsetup)."""

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
from builder import usb
from builder.usb import Disk, UsbError, check_disk, inspect_disk, plan_partition
from tests.fixtures.ollama_double import write_model

GiB = 1 << 30
MiB = 1 << 20
ISO_SIZE = 330 * MiB


def fake_sys(tmp_path: Path, name: str, partition: bool = False, holders: tuple[str, ...] = ()) -> Path:
    block = tmp_path / "sys/class/block" / name
    (block / "holders").mkdir(parents=True)
    if partition:
        (block / "partition").write_text("1\n")
    for holder in holders:
        (block / "holders" / holder).touch()
    return tmp_path / "sys"


def lsblk_sample(name: str, size: int, children: list[dict[str, object]] | None = None,
                 mountpoints: list[str | None] | None = None, kind: str = "disk") -> dict[str, object]:
    return {"blockdevices": [{"name": name, "path": f"/dev/{name}", "size": size, "type": kind,
                              "model": "SanDisk Ultra  ", "mountpoints": mountpoints or [None],
                              "children": children or []}]}


def part(name: str, mount: str | None = None, children: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"name": name, "path": f"/dev/{name}", "size": GiB, "type": "part", "model": None,
            "mountpoints": [mount], "children": children or []}


def test_a_blank_stick_passes(tmp_path: Path) -> None:
    disk = inspect_disk("/dev/sdz", fake_sys(tmp_path, "sdz"), lsblk_sample("sdz", 16 * GiB, [part("sdz1")]))
    assert disk == Disk(name="sdz", path="/dev/sdz", size=16 * GiB, model="SanDisk Ultra", partitions=("sdz1",))
    check_disk(disk, ISO_SIZE, mounted_sources={"vda", "vda1"})
    assert "SanDisk Ultra, 16.0 GiB, sdz1" in disk.describe()


def test_partition_instead_of_disk(tmp_path: Path) -> None:
    with pytest.raises(UsbError, match=r"is a partition; give the whole disk"):
        inspect_disk("/dev/sdz1", fake_sys(tmp_path, "sdz1", partition=True), lsblk_sample("sdz1", GiB))


def test_not_a_block_device(tmp_path: Path) -> None:
    with pytest.raises(UsbError, match="not a block device"):
        inspect_disk("/dev/nonexistent", fake_sys(tmp_path, "sdz"), lsblk_sample("x", GiB))


def test_mounted_partition_is_refused(tmp_path: Path) -> None:
    sample = lsblk_sample("sdz", 16 * GiB, [part("sdz1", "/media/stick")])
    disk = inspect_disk("/dev/sdz", fake_sys(tmp_path, "sdz"), sample)
    with pytest.raises(UsbError, match=r"mounted filesystems \(/media/stick\)"):
        check_disk(disk, ISO_SIZE, mounted_sources=set())


def test_root_disk_behind_lvm_is_refused(tmp_path: Path) -> None:
    lvm = {"name": "vg-root", "path": "/dev/mapper/vg-root", "size": GiB, "type": "lvm", "model": None,
           "mountpoints": ["/"], "children": []}
    sample = lsblk_sample("sdz", 500 * GiB, [part("sdz2", None, [lvm])])
    disk = inspect_disk("/dev/sdz", fake_sys(tmp_path, "sdz"), sample)
    with pytest.raises(UsbError, match=r"mounted filesystems \(/\)"):
        check_disk(disk, ISO_SIZE, mounted_sources=set())


def test_disk_holding_a_mounted_source_is_refused(tmp_path: Path) -> None:
    disk = inspect_disk("/dev/vda", fake_sys(tmp_path, "vda"), lsblk_sample("vda", 100 * GiB))
    with pytest.raises(UsbError, match=r"holds a mounted filesystem \(vda\)"):
        check_disk(disk, ISO_SIZE, mounted_sources={"vda"})


def test_disk_in_use_by_device_mapper(tmp_path: Path) -> None:
    disk = inspect_disk("/dev/sdz", fake_sys(tmp_path, "sdz", holders=("dm-3",)), lsblk_sample("sdz", 16 * GiB))
    with pytest.raises(UsbError, match="in use by dm-3"):
        check_disk(disk, ISO_SIZE, mounted_sources=set())


def test_too_small(tmp_path: Path) -> None:
    disk = inspect_disk("/dev/sdz", fake_sys(tmp_path, "sdz"), lsblk_sample("sdz", GiB))
    with pytest.raises(UsbError, match="too small"):
        check_disk(disk, ISO_SIZE, mounted_sources=set())


def test_rom_drive_is_not_a_disk(tmp_path: Path) -> None:
    disk = inspect_disk("/dev/sr0", fake_sys(tmp_path, "sr0"), lsblk_sample("sr0", 16 * GiB, kind="rom"))
    with pytest.raises(UsbError, match="is a rom, not a whole disk"):
        check_disk(disk, ISO_SIZE, mounted_sources=set())


def test_plan_fills_the_disk_after_the_iso_aligned() -> None:
    plan = plan_partition(16 * GiB, ISO_SIZE)
    assert plan.start == 330 * MiB and plan.start % MiB == 0
    assert plan.end <= 16 * GiB - 34 * 512
    assert 16 * GiB - plan.end < 2 * MiB


@pytest.mark.parametrize(("spec", "size"), [("50%", 8026 * MiB), ("4G", 4 * GiB), ("2048M", 2 * GiB)])
def test_plan_sizes(spec: str, size: int) -> None:
    plan = plan_partition(16 * GiB, ISO_SIZE, spec)
    assert abs(plan.size - size) <= MiB


@pytest.mark.parametrize(("spec", "message"), [("200%", "1%-100%"), ("0%", "1%-100%"), ("20G", "only"),
                                               ("100M", "below the minimum"), ("lots", "use e.g. 16G")])
def test_plan_rejects(spec: str, message: str) -> None:
    with pytest.raises(UsbError, match=message):
        plan_partition(16 * GiB, ISO_SIZE, spec)


def test_models_are_verified_by_blob_name(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    (models / "manifests/registry.ollama.ai/library/tiny").mkdir(parents=True)
    (models / "manifests/registry.ollama.ai/library/tiny/latest").write_text("{}")
    data = b"weights"
    (models / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}").write_bytes(data)
    assert usb.verify_models(models) == ["registry.ollama.ai/library/tiny/latest"]
    (models / "blobs" / f"sha256-{'0' * 64}").write_bytes(b"tampered")
    with pytest.raises(UsbError, match="does not match its sha256 name"):
        usb.verify_models(models)


def test_cli_needs_exactly_one_target(tmp_path: Path) -> None:
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"x")
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(iso)])
    assert result.exit_code == 2 and "exactly one of --device" in result.output


root_only = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("sfdisk") or not shutil.which("losetup"),
                               reason="needs root, sfdisk and loop devices")


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
    plan = usb.PartitionPlan(iso_size=iso.stat().st_size, start=persistence["start"] * 512,
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
        assert (mnt / "persistence.conf").read_text() == "/var/lib/neuraldrive bind\n"
        models = mnt / "var/lib/neuraldrive/models"
        assert models.stat().st_uid == 901
        assert list((models / "manifests").rglob("latest"))
        assert all(p.stat().st_uid == 901 for p in models.rglob("*"))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@root_only
def test_failed_write_leaves_no_image(tmp_path: Path) -> None:
    iso = synthetic_iso(tmp_path)
    models = tmp_path / "bad-models"
    (models / "blobs").mkdir(parents=True)
    (models / "manifests").mkdir()
    (models / "blobs" / f"sha256-{'1' * 64}").write_bytes(b"not that")
    image = tmp_path / "stick.img"
    result = CliRunner().invoke(build.cli, ["usb", "--iso", str(iso), "--image", str(image), "--size", "2G",
                                            "--models", str(models)])
    assert result.exit_code == 2 and "does not match its sha256 name" in result.output
    assert not image.exists()


def test_mbr_entry_layout() -> None:
    entry = usb.mbr_entry(True, 0xEF, 2048, 4096)
    assert len(entry) == 16 and entry[0] == 0x80 and entry[4] == 0xEF
    assert int.from_bytes(entry[8:12], "little") == 2048 and int.from_bytes(entry[12:16], "little") == 4096
    assert entry[1:4] == bytes((32, 33, 0))  # LBA 2048 = cylinder 0, head 32, sector 33
    assert usb.mbr_entry(False, 0x83, 40 << 21, 8)[1:4] == bytes((254, 0xFF, 0xFF))  # past CHS range


def test_select_models_takes_only_the_named_ones(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_model(store, "tiny:latest", size=10)
    write_model(store, "other:7b", size=20)
    chosen = usb.select_models(store, ["tiny"], tmp_path / "chosen")
    manifests = [p.relative_to(chosen / "manifests") for p in (chosen / "manifests").rglob("*") if p.is_file()]
    assert [str(m) for m in manifests] == ["registry.ollama.ai/library/tiny/latest"]
    tiny = json.loads((chosen / "manifests" / manifests[0]).read_text())
    wanted = {d.replace(":", "-") for d in [tiny["config"]["digest"], *(x["digest"] for x in tiny["layers"])]}
    assert {b.name for b in (chosen / "blobs").iterdir()} == wanted
    with pytest.raises(usb.UsbError, match=r"other:latest.*no manifest"):
        usb.select_models(store, ["other:latest"], tmp_path / "none")
    weights = next(d for d in wanted if (store / "blobs" / d).stat().st_size == 10)
    (store / "blobs" / weights).unlink()
    with pytest.raises(usb.UsbError, match="is missing"):
        usb.select_models(store, ["tiny"], tmp_path / "again")


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
    plan = usb.PartitionPlan(iso_size=iso.stat().st_size, start=40 * MiB, size=(2 * GiB - 41 * MiB))
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
