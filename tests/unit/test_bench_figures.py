"""`build.py bench`'s figures: the time in the initramfs from a recorded boot's kernel log, the ratios
(medians over medians), and the boots' plan (alternating images, a fresh persistence disk per boot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import VMError
from builder.proof import benchboots
from builder.proof.boots import BootFigures
from builder.proof.figures import Figure, build_ratios, reference_ratios
from builder.proof.kernellog import initramfs_seconds, kernel_lines
from builder.vm.machine import BootSpec

BOOTLOG = Path(__file__).resolve().parents[1] / "fixtures" / "bootlog"
DMESG = (BOOTLOG / "dmesg-bios-disk.txt").read_text()
SERIAL = (BOOTLOG / "serial-bios-disk.log").read_text(errors="replace")
# In the recorded boot: "[    2.658314] Run /init as init process", "[   11.758959] Not activating
# Mandatory Access Control as /sbin/tomoyo-init does not exist.", "[   12.358802] systemd[1]: Inserted
# module 'autofs4'".
TO_REAL_INIT = round(11.758959 - 2.658314, 2)
TO_SYSTEMD = round(12.358802 - 2.658314, 2)


def without(log: str, text: str) -> str:
    return "\n".join(line for line in log.splitlines() if text not in line)


@pytest.mark.parametrize("log", [DMESG, SERIAL], ids=["dmesg", "serial"])
def test_initramfs_time_of_a_recorded_boot(log: str) -> None:
    assert initramfs_seconds(log) == TO_REAL_INIT == 9.1


@pytest.mark.parametrize("log", [DMESG, SERIAL], ids=["dmesg", "serial"])
def test_without_the_exec_line_systemds_first_line_ends_it(log: str) -> None:
    assert initramfs_seconds(without(log, "Not activating Mandatory Access Control")) == TO_SYSTEMD == 9.7


def test_a_log_without_either_end_has_no_figure() -> None:
    assert initramfs_seconds(without(DMESG, "Run /init as init process")) is None
    cut = DMESG[:DMESG.index("Not activating Mandatory")]
    assert initramfs_seconds(cut) is None
    assert initramfs_seconds("") is None


def test_kernel_lines_read_past_escape_codes() -> None:
    # In the serial log systemd's second line follows the terminal codes its console setup sent.
    line = next(line for line in SERIAL.splitlines() if "running in system mode" in line)
    assert not line.startswith("[")
    assert (12.579718, "systemd[1]: systemd 257.13-1~deb13u1 running in system mode") in [
        (seconds, message[:59]) for seconds, message in kernel_lines(SERIAL)]


def test_reference_ratio_is_median_over_median() -> None:
    figures = {"boot_gateway_bios-disk": Figure("g", "s", [30.0, 31.0, 50.0]),
               "reference_console_bios-disk": Figure("r", "s", [10.0, 30.0, 31.0]),
               "boot_gateway_uefi-disk": Figure("g", "s", [30.0, 40.0]),
               "reference_console_uefi-disk": Figure("r", "s", [25.0, 25.0]),
               "boot_gateway_bios-cd": Figure("g", "s", [30.0])}
    ratios = reference_ratios(figures, ["bios-disk", "uefi-disk", "bios-cd"])
    # 31/30, not the median of the pairwise ratios (3.0, 1.03, 1.61) nor the means' ratio (1.56).
    assert ratios == {"gateway_bios-disk / reference_console_bios-disk": 1.033,
                      "gateway_uefi-disk / reference_console_uefi-disk": 1.4}


def test_build_ratios_and_summary() -> None:
    figures = {"cold_build": Figure("c", "s", [100.0]), "warm_build_unchanged": Figure("u", "s", [20.0]),
               "warm_build_template": Figure("t", "s", [30.0]), "warm_build_package": Figure("p", "s", [50.0])}
    assert build_ratios(figures) == {"warm_build_unchanged": 0.2, "warm_build_template": 0.3,
                                     "warm_build_package": 0.5}
    assert Figure("x", "s", [3.0, 1.0, 2.0]).summary() == {"runs": 3, "min": 1.0, "median": 2.0, "max": 3.0,
                                                           "unit": "s", "values": [3.0, 1.0, 2.0]}
    assert Figure("x", "s").summary() == {"runs": 0}


def test_boots_alternate_each_on_a_fresh_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, Path, Path | None]] = []

    def fake_disk(path: Path, size: str = "2G") -> Path:
        assert not path.exists()
        path.write_bytes(b"fresh")
        return path

    def fake_boot(spec: BootSpec, key: Path | None, workdir: Path) -> BootFigures:
        seen.append(("neuraldrive", spec.iso, spec.persistence_disk))
        return BootFigures(mode="", console_s=10.0, ssh_s=20.0, gateway_ready_s=30.0 + len(seen), initramfs_s=9.1,
                           critical_chain={"neuraldrive-caddy.service": "chain"})

    def fake_console(spec: BootSpec, workdir: Path) -> BootFigures:
        seen.append(("reference", spec.iso, spec.persistence_disk))
        return BootFigures(mode="", console_s=25.0)

    monkeypatch.setattr(benchboots, "make_persistence_disk", fake_disk)
    monkeypatch.setattr(benchboots, "measure_boot", fake_boot)
    monkeypatch.setattr(benchboots, "measure_console", fake_console)
    nd, ref = tmp_path / "nd.iso", tmp_path / "ref.iso"
    result = benchboots.run_boots(nd, ref, 8443, None, ["bios-disk", "uefi-disk"], 2, tmp_path)
    assert [(image, iso) for image, iso, _ in seen] == [("neuraldrive", nd), ("reference", ref)] * 4
    disks = [disk for _, _, disk in seen]
    assert all(disk is not None and disk.is_file() for disk in disks) and len(set(disks)) == 8
    assert result.figures["boot_gateway_bios-disk"].values == [31.0, 33.0]
    assert result.figures["reference_console_uefi-disk"].values == [25.0, 25.0]
    assert result.figures["initramfs_uefi-disk"].values == [9.1, 9.1]
    assert [b["initramfs_s"] for b in result.boots if b["image"] == "neuraldrive"] == [9.1] * 4
    assert result.boots[0]["critical_chain"] == {"neuraldrive-caddy.service": "chain"}
    assert reference_ratios(result.figures, ["bios-disk"]) == {"gateway_bios-disk / reference_console_bios-disk": 1.28}


def test_a_reference_without_a_login_prompt_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_prompt(spec: BootSpec, workdir: Path) -> BootFigures:
        raise VMError("no 'NeuralDrive console' on the serial console within 600s; it shows:\nBooting")

    monkeypatch.setattr(benchboots, "make_persistence_disk", lambda path: path)
    monkeypatch.setattr(benchboots, "measure_console", no_prompt)
    with pytest.raises(VMError, match="did not boot to a login prompt on ttyS0") as caught:
        benchboots.reference_boot(tmp_path / "ref.iso", "uefi-disk", tmp_path / "r")
    assert "--no-reference" in str(caught.value).splitlines()[0] and "Booting" in str(caught.value)


def test_the_benchs_source_copy_renders_like_the_checkout(tmp_path: Path) -> None:
    """The template-change build renders from a copy of the template dirs: the copy must hold what the
    templates import (config/templates), or that build fails with TemplateNotFound."""
    from builder.image.render import render_tree
    from builder.profile import load_profile
    from builder.proof.bench import _source_copy

    profile = load_profile("test")
    copy = _source_copy(tmp_path / "src")
    tree = render_tree(profile, tmp_path / "tree", [], source_root=copy)
    checkout = render_tree(profile, tmp_path / "checkout", [])
    unit = "config/includes.chroot_after_packages/etc/systemd/system/neuraldrive-caddy.service"
    assert (tree / unit).read_text() == (checkout / unit).read_text()
