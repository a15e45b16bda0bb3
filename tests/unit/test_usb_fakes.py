"""Loop-free stand-ins for writing a stick (no tests here): a tmp dir shaped like /sys, /proc and /dev, lsblk."""

from __future__ import annotations

from pathlib import Path

from builder.usb.disk import System

GiB = 1 << 30
MiB = 1 << 20


def lsblk_sample(name: str, size: int, children: list[dict[str, object]] | None = None,
                 mountpoints: list[str | None] | None = None, kind: str = "disk") -> dict[str, object]:
    return {"blockdevices": [{"name": name, "path": f"/dev/{name}", "size": size, "type": kind,
                              "model": "SanDisk Ultra  ", "mountpoints": mountpoints or [None],
                              "children": children or []}]}


def part(name: str, mount: str | None = None, children: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"name": name, "path": f"/dev/{name}", "size": GiB, "type": "part", "model": None,
            "mountpoints": [mount], "children": children or []}


class FakeHost:
    """/sys/class/block, /proc and /dev for one disk and its partitions (regular files stand in for nodes)."""

    def __init__(self, root: Path, disk: str = "sdz", partitions: tuple[str, ...] = ("sdz1", "sdz2"),
                 size: int = 16 * GiB, kind: str = "disk", lsblk_children: list[dict[str, object]] | None = None):
        self.root, self.disk, self.size = root, disk, size
        self.sys, self.proc, self.dev = root / "sys", root / "proc", root / "dev"
        block = self.sys / "class/block"
        (block / disk / "holders").mkdir(parents=True)
        self.dev.mkdir()
        (self.dev / disk).write_bytes(b"")
        for name in partitions:
            (block / disk / name / "holders").mkdir(parents=True)
            (block / disk / name / "partition").write_text(name[len(disk):] + "\n")
            (block / name).symlink_to(Path(disk) / name)  # /sys/class/block/sdz1 → the disk's sdz1 dir
            (self.dev / name).write_bytes(b"")
        (self.proc / "self").mkdir(parents=True)
        (self.proc / "self/mounts").write_text("/dev/vda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n")
        (self.proc / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
        (self.proc / "mdstat").write_text("Personalities : \nunused devices: <none>\n")
        children = lsblk_children if lsblk_children is not None else [part(p) for p in partitions]
        self.sample = lsblk_sample(disk, size, children, kind=kind)

    @property
    def system(self) -> System:
        return System(sys=self.sys, proc=self.proc, dev=self.dev, lsblk=lambda path: self.sample)

    def hold(self, device: str, holder: str, dm_name: str | None = None, uuid: str = "",
             md_level: str | None = None) -> None:
        """`holder` (dm-N with a name and uuid, or an mdN array) built on `device`."""
        (self.sys / "class/block" / device / "holders" / holder).touch()
        node = self.sys / "class/block" / holder
        if dm_name is not None:
            (node / "dm").mkdir(parents=True, exist_ok=True)
            (node / "dm/name").write_text(dm_name + "\n")
            (node / "dm/uuid").write_text(uuid + "\n")
        if md_level is not None:
            (node / "md").mkdir(parents=True, exist_ok=True)
            (node / "md/level").write_text(md_level + "\n")
