"""`build.py test -k EXPR`: the option reaches the run, and pytest, run as the harness runs it, selects
exactly the matching tests of tests/image in both phases of the full suite (collection only: no VM)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import build
from builder.files import ROOT
from builder.proof import session
from builder.proof.imagetest import pytest_command
from builder.proof.session import ProofRequest
from builder.vm.guest import SshAccess
from tests.image.conftest import REQUIRED


def test_k_reaches_the_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ProofRequest] = []

    class Verdict:
        ok = True

    def fake_prove(request: ProofRequest) -> Verdict:
        seen.append(request)
        return Verdict()

    monkeypatch.setattr(session, "prove_image", fake_prove)
    iso = tmp_path / "x.iso"
    result = CliRunner().invoke(build.cli, ["test", "--iso", str(iso), "-k", "journal and not limits",
                                            "--modes", "bios-cd", "--no-stick", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert seen == [ProofRequest(iso=iso, profile_name="test", out_dir=Path("out"), cache_dir=seen[0].cache_dir,
                                modes="bios-cd", accel="auto", offline=False, use_cache=False, stick=False,
                                real_archive=None, select="journal and not limits")]
    assert CliRunner().invoke(build.cli, ["test", "--iso", str(iso)]).exit_code == 0
    assert seen[1].select is None and seen[1].use_cache and seen[1].stick


def collected(phase: str, select: str | None, tmp_path: Path) -> list[str]:
    config = tmp_path / "ssh_config"
    config.write_text("")
    access = SshAccess(key=tmp_path / "key", config=config, port=1)
    cmd = [*pytest_command(phase, access, tmp_path / "junit.xml", select), "--collect-only"]
    env = {**os.environ, **dict.fromkeys(REQUIRED, "1"), "NEURALDRIVE_STATE": str(tmp_path / "state.json")}
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False).stdout
    return sorted(line.split("::")[1].split("[")[0] for line in out.splitlines() if "::" in line)


def test_k_selects_both_halves_of_a_test(tmp_path: Path) -> None:
    assert collected("main", "journal", tmp_path) == ["test_log_a_marker",
                                                      "test_the_journal_is_on_the_persistence_partition"]
    assert collected("after-reboot", "journal", tmp_path) == ["test_journald_runs_with_the_limits",
                                                              "test_the_marker_survives_the_reboot"]
    assert collected("after-reboot", "journal and not limits", tmp_path) == ["test_the_marker_survives_the_reboot"]


def test_without_k_the_whole_suite_runs(tmp_path: Path) -> None:
    main = collected("main", None, tmp_path)
    assert len(main) > 50 and "test_log_a_marker" in main and "test_the_marker_survives_the_reboot" not in main
    assert "-k" not in pytest_command("main", SshAccess(key=tmp_path, config=tmp_path, port=1), tmp_path / "j.xml")
