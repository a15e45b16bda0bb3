"""Which QEMU boots the guests, and how a chrooted one reaches the host's files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.errors import VMError
from builder.vm import qemu
from builder.vm.qemu import Qemu, bind_dirs, select_qemu


def test_binds_top_level_dirs_but_never_a_system_dir_of_the_root(tmp_path: Path) -> None:
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"")
    binds = bind_dirs([iso, Path("/root/runs/x"), Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/var/tmp/w")])
    assert "/usr/share/OVMF" in binds and "/var/tmp" in binds
    assert "/usr" not in binds and "/var" not in binds
    assert f"/{tmp_path.parts[1]}" in binds and "/root" in binds


def test_parents_are_bound_before_what_they_contain() -> None:
    binds = bind_dirs([Path("/var/lib/a/b/c"), Path("/var/lib/a/x")])
    assert binds == sorted(binds, key=lambda b: b.count("/"))


def test_host_qemu_runs_directly_and_a_rooted_one_in_a_private_namespace(tmp_path: Path) -> None:
    assert Qemu("10.0", None).command(["-m", "64"]) == ["qemu-system-x86_64", "-m", "64"]
    cmd = Qemu("10.0", tmp_path).command(["-m", "64"], [Path("/srv/x.iso")])
    assert cmd[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert cmd[-5:] == [str(tmp_path), "/srv", "--", "-m", "64"]
    assert Qemu("10.0", tmp_path).ovmf("OVMF_VARS_4M.fd") == tmp_path / "usr/share/OVMF/OVMF_VARS_4M.fd"


def test_unknown_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    select_qemu.cache_clear()
    monkeypatch.setenv("NEURALDRIVE_QEMU", "fastest")
    try:
        with pytest.raises(VMError, match="NEURALDRIVE_QEMU='fastest'"):
            select_qemu()
    finally:
        select_qemu.cache_clear()


def test_old_host_qemu_gives_way_to_the_tools_root(monkeypatch: pytest.MonkeyPatch) -> None:
    versions: dict[str, str | None] = {"qemu-system-x86_64": "7.2.22", "unshare": "10.0.13"}
    monkeypatch.setattr(qemu, "_version", lambda command: versions[command[0]])
    monkeypatch.setattr(qemu, "TOOLS_ROOT", Path("/"))  # "has" usr/bin/qemu-system-x86_64 if the host has
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("NEURALDRIVE_QEMU", raising=False)
    if shutil.which("qemu-system-x86_64") != "/usr/bin/qemu-system-x86_64":
        pytest.skip("needs /usr/bin/qemu-system-x86_64 to stand for the root's")
    try:
        select_qemu.cache_clear()
        assert select_qemu() == Qemu("10.0.13", Path("/"))
        select_qemu.cache_clear()
        monkeypatch.setenv("NEURALDRIVE_QEMU", "host")
        assert select_qemu() == Qemu("7.2.22", None)
        select_qemu.cache_clear()
        monkeypatch.delenv("NEURALDRIVE_QEMU")
        versions["unshare"] = None  # no mount namespaces here: the host's, slow but working
        assert select_qemu() == Qemu("7.2.22", None)
        select_qemu.cache_clear()
        versions["unshare"] = "10.0.13"
        versions["qemu-system-x86_64"] = "10.1.0"  # a host as new as trixie's keeps its own
        assert select_qemu() == Qemu("10.1.0", None)
    finally:
        select_qemu.cache_clear()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root for mount namespaces")
def test_chrooted_qemu_sees_host_dirs_and_leaves_no_mounts(tmp_path: Path) -> None:
    """The real wrapper, with the host's / standing in as the root: QEMU prints its version and
    nothing stays mounted afterwards."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no QEMU on this host")
    before = Path("/proc/self/mountinfo").read_text()
    cmd = Qemu("x", Path("/")).command(["--version"], [tmp_path])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "QEMU emulator version" in out.stdout
    assert Path("/proc/self/mountinfo").read_text() == before


def test_vm_hands_qemu_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chrooted QEMU starts in the root's /: relative ISO or disk paths would not resolve."""
    from builder.vm.machine import VM, BootSpec

    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img")
    monkeypatch.chdir(tmp_path)
    Path("x.iso").write_bytes(b"")
    Path("work").mkdir()
    import builder.vm.machine

    monkeypatch.setattr(builder.vm.machine, "select_qemu", lambda: Qemu("10.0", tmp_path))
    vm = VM(BootSpec(iso=Path("x.iso"), media="cd", persistence_disk=Path("p.qcow2")), Path("work"))
    cmd = vm.command()
    assert any(f"file={tmp_path}/x.iso," in arg for arg in cmd)
    assert any(f"file={tmp_path}/p.qcow2," in arg for arg in cmd)
    assert all("file=x.iso" not in arg and "path=work" not in arg for arg in cmd)


def test_ssh_control_socket_path_always_fits() -> None:
    """ssh's master socket is ControlPath with %C (40 hex) and a 17-byte temporary suffix; past 107 bytes
    the master cannot bind and every ssh to the guest fails (the bench's deep work dirs did)."""
    from builder.vm.guest import CONTROL_SUFFIX, SOCKET_PATH_MAX, control_path

    assert control_path(Path("/tmp/nd-x")) == "/tmp/nd-x/cm-%C"  # beside the run's files when it fits
    deep = Path("/tmp/neuraldrive-bench-fgg2m3j1/boot-bios-disk-0-and-some-more")
    path = control_path(deep)
    assert not path.startswith(str(deep)) and len(path) - 2 + CONTROL_SUFFIX <= SOCKET_PATH_MAX
