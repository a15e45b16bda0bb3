"""`neuraldrive logs`: which journal (one unit, ours by short name, or all), never an option from the
unit argument, and the line saying whether the journal survives a reboot; plus the image side that
makes it survive (persistence.conf, the hook, journald's limits)."""

from __future__ import annotations

import argparse
import configparser
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from builder import facts
from builder.image.render import ROOT
from builder.usb.content import lay_out
from tests.fixtures.gpu import CHROOT, lib

logs = lib("logs")
admin = lib("neuraldrive")


def run(argv: list[str], tmp_path: Path, mounted: bool = True) -> tuple[int, list[str], list[Sequence[str]]]:
    (tmp_path / "neuraldrive-ollama.service").touch()
    args = admin.build_parser().parse_args(["logs", *argv])
    said: list[str] = []
    calls: list[Sequence[str]] = []

    def call(argv: Sequence[str]) -> int:
        calls.append(list(argv))
        return 0

    code = logs.show(args, said.append, call, tmp_path, lambda _path: mounted)
    return code, said, calls


def test_all_of_the_journal_by_default(tmp_path: Path) -> None:
    code, said, calls = run([], tmp_path)
    assert code == 0
    assert calls == [["journalctl", "--no-pager", "--lines=100"]]
    assert said == ["# journal kept on the persistence partition (survives reboots; 7 days, 2 GiB at most)"]


def test_our_units_by_short_name_others_as_given(tmp_path: Path) -> None:
    assert run(["ollama", "-n", "5", "-f"], tmp_path)[2] == [
        ["journalctl", "--no-pager", "--lines=5", "--unit=neuraldrive-ollama.service", "--follow"]]
    assert run(["ssh"], tmp_path)[2][0][-1] == "--unit=ssh.service"
    assert run(["systemd-journald.socket"], tmp_path)[2][0][-1] == "--unit=systemd-journald.socket"
    assert run(["neuraldrive-caddy"], tmp_path)[2][0][-1] == "--unit=neuraldrive-caddy.service"


def test_without_persistence_it_says_the_journal_is_lost_at_reboot(tmp_path: Path) -> None:
    assert "lost at the next boot" in run([], tmp_path, mounted=False)[1][0]


@pytest.mark.parametrize("bad", ["--since=1970", "a b", "x;reboot", "../etc", ""])
def test_a_unit_that_is_not_a_name_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(logs.LogsError, match="not a unit name"):
        logs.unit_name(bad, tmp_path)


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = admin.Context(lib("common").Settings({}))
    args = argparse.Namespace(unit="a b", lines=10, follow=False)
    assert admin.dispatch(lambda _ctx, a: logs.show(a), ctx, args) == 2
    assert capsys.readouterr().err.strip() == "neuraldrive: 'a b': not a unit name"


def test_journald_limits_are_seed_004s_and_storage_follows_the_dir() -> None:
    conf = configparser.ConfigParser()
    conf.optionxform = str  # type: ignore[assignment,method-assign]
    conf.read(CHROOT / "etc/systemd/journald.conf.d/neuraldrive.conf")
    assert dict(conf["Journal"]) == {"Storage": "auto", "SystemMaxUse": "2G", "SystemMaxFileSize": "100M",
                                     "MaxRetentionSec": "7d", "RuntimeMaxUse": "200M"}


def test_the_image_has_no_journal_dir_and_persistence_binds_one(tmp_path: Path) -> None:
    hook = (ROOT / "hooks/07-journal.hook.chroot.j2").read_text()
    assert "rm -rf {{ facts.JOURNAL_DIR }}" in hook
    assert facts.PERSISTENCE_CONF.splitlines() == ["/var/lib/neuraldrive bind", "/var/log/journal bind"]
    assert (CHROOT / "usr/share/neuraldrive/persistence.conf").read_text() == facts.PERSISTENCE_CONF
    # live-boot copies a missing bind source from the image, which has none: every disk has it already.
    lay_out(tmp_path)
    assert (tmp_path / "var/log/journal").is_dir()
    assert (tmp_path / "persistence.conf").read_text() == facts.PERSISTENCE_CONF


def journal_link(tmp_path: Path, machine_id: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "machine-id").write_text(machine_id + "\n")
    return subprocess.run([str(CHROOT / "usr/lib/neuraldrive/journal-link"), str(tmp_path / "journal"),
                           str(tmp_path / "machine-id")], capture_output=True, text=True, check=False)


def test_every_boots_machine_id_links_to_one_directory(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    journal.chmod(0o2755)  # as journald (and the stick writer) make it: setgid, inherited below
    old = journal / ("0" * 32)
    old.mkdir()  # a boot before the link existed: kept
    first, second = "a" * 32, "b" * 32
    assert journal_link(tmp_path, first).returncode == 0
    (journal / first / "system.journal").write_text("boot 1")
    assert journal_link(tmp_path, second).returncode == 0
    assert journal_link(tmp_path, second).returncode == 0  # idempotent
    assert sorted(p.name for p in journal.iterdir()) == sorted(["0" * 32, second, "device"])
    assert (journal / second).resolve() == (journal / "device").resolve()
    assert (journal / second / "system.journal").read_text() == "boot 1"
    assert (journal / "device").stat().st_mode & 0o7777 == 0o2755


@pytest.mark.parametrize("machine_id", ["", "uninitialized", "../" + "a" * 29, "A" * 32, "a" * 31])
def test_no_link_without_a_machine_id(tmp_path: Path, machine_id: str) -> None:
    (tmp_path / "journal").mkdir()
    result = journal_link(tmp_path, machine_id)
    assert result.returncode == 0 and "no usable machine-id" in result.stderr
    assert list((tmp_path / "journal").iterdir()) == []


def test_the_journal_unit_runs_only_with_persistence_before_the_flush() -> None:
    from builder.profile import load_profile
    from tests.unit.test_inimage_units import render

    text = render(CHROOT / "etc/systemd/system/neuraldrive-journal.service.j2", load_profile("default"))
    assert "ConditionPathIsMountPoint=/var/log/journal" in text
    assert "Before=systemd-journal-flush.service" in text
    assert "ReadWritePaths=/var/log/journal" in text
    assert "systemctl enable neuraldrive-journal.service" in (ROOT / "hooks/07-journal.hook.chroot.j2").read_text()
