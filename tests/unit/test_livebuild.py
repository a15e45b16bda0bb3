"""The build driver around live-build, with a stand-in `lb` that records its calls: phase order,
the package layer (cold, warm, --no-cache, invalidation), failures (log tail, no ISO left behind).
The real live-build runs in the image tests (`build.py test`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from builder.errors import LiveBuildError
from builder.image import binarytools, pipeline
from builder.image.builddir import mounts_below, release_mounts
from builder.image.lbconfig import lb_config_args
from builder.image.livebuild import image_phase
from builder.image.pipeline import ArtifactOptions, build_iso
from builder.image.publish import output_names
from builder.profile import load_profile
from builder.proof.ollama_double.package import build_archive

FAKE_LB = r"""#!/bin/sh
# Stand-in for live-build: records each call, makes the files later phases read.
echo "$*" >> "$CALLS"
echo "[2026-01-01 00:00:00] lb $*"
case "$1" in
    bootstrap) mkdir -p chroot/etc .build cache/bootstrap/var/lib/dpkg; touch .build/bootstrap
        echo base > chroot/etc/base
        mkdir -p chroot/var/lib/dpkg chroot/usr/local/bin chroot/usr/local/lib
        printf 'Package: base-files\nStatus: install ok installed\nVersion: 13.8\n' > chroot/var/lib/dpkg/status
        echo "Package: base-files" > cache/bootstrap/var/lib/dpkg/status ;;
    chroot_install-packages) echo "$2" >> chroot/etc/installed ;;
    chroot_hooks)
        # The builder installed the engine before the hooks (hook 03 verifies it, others run it).
        test -x chroot/usr/local/bin/ollama || { echo "E: no engine before the hooks"; exit 1; }
        if [ "$FAIL_AT" = chroot_hooks ]; then
            # like lb: /proc is mounted in the chroot when the hook fails
            if [ -n "$MOUNT_PROC" ]; then mkdir -p chroot/proc && mount -t tmpfs fake-proc chroot/proc; fi
            i=0; while [ $i -lt 60 ]; do echo "hook output line $i"; i=$((i + 1)); done
            echo "E: config/hooks/live/04-enable-units.hook.chroot failed"; exit 1
        fi ;;
    chroot_linux-image) mkdir -p chroot/boot; echo kernel > chroot/boot/vmlinuz-6.12
        echo initrd > chroot/boot/initrd.img-6.12 ;;
    binary_chroot) mv chroot chroot.tmp; cp -a cache/bootstrap chroot; mv chroot.tmp chroot/chroot
        touch chroot/chroot.cache ;;
    # No chroot.cache: the squashfs is taken from the inner chroot, then that is removed.
    binary_rootfs) test ! -e chroot/chroot.cache && test -f chroot/chroot/etc/base && rm -rf chroot/chroot || exit 1
        mkdir -p binary/live ;;
    binary_linux-image) test -f chroot/boot/vmlinuz-6.12 ;;
    binary_manifest) printf 'caddy\t2.6.2\n' > neuraldrive-amd64.packages ;;
    binary_iso) test -f chroot/usr/bin/xorriso && echo iso > neuraldrive-amd64.hybrid.iso ;;
esac
"""


@pytest.fixture
def fake_live_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lb").write_text(FAKE_LB)
    (bin_dir / "chroot").write_text("#!/bin/sh\necho \"fake $*\"\n")
    for tool in ("lb", "chroot"):
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setattr(pipeline, "check_host", lambda require_root=True: "1:20250505+deb13u1")
    # The real script sources live-build's functions; this one installs the checked files.
    fake_install = "\n".join(f"mkdir -p chroot/{os.path.dirname(path)} && touch chroot/{path}"
                             for path, _ in binarytools.BINARY_TOOLS)
    monkeypatch.setattr(binarytools, "install_script", lambda: fake_install)
    return calls


@pytest.fixture
def options(tmp_path_factory: pytest.TempPathFactory) -> ArtifactOptions:
    archive = build_archive(tmp_path_factory.mktemp("double"))
    return ArtifactOptions(archive=str(archive), offline=True)


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_cold_then_warm_build(fake_live_build: Path, options: ArtifactOptions, tmp_path: Path) -> None:
    profile = load_profile("test")
    out, cache = tmp_path / "out", tmp_path / "cache"
    outputs = build_iso(profile, out, cache, options)
    cold = calls(fake_live_build)
    assert cold[:3] == ["config", "bootstrap", "chroot_prep install all mode-archives-chroot"]
    assert cold.index("chroot_install-packages live") < cold.index("chroot_includes_after_packages")
    assert cold[-1] == "source"
    # The tools chroot is made once, from the bootstrap, with apt; the image chroot goes inside it.
    assert cold.index("binary_chroot") < cold.index("chroot_archives chroot install") < cold.index("binary_rootfs")
    assert "binary_bootloader_splash" not in cold
    info = json.loads(outputs.build_info.read_text())
    assert info["package_layer"]["from_cache"] is False
    assert Path(info["package_layer"]["path"]).is_file()
    assert info["binary_tools"]["from_cache"] is False
    tools = next((cache / "live-build").glob(f"*/{info['binary_tools']['archive']}"))
    listing = subprocess.run(["tar", "-tf", str(tools)], capture_output=True, text=True, check=True).stdout.split()
    assert "./usr/bin/xorriso" in listing
    assert not [name for name in listing if name.startswith(("./chroot/", "./boot/"))]  # no image inside
    layer = subprocess.run(["tar", "-tf", info["package_layer"]["path"]], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "chroot/etc/base" in layer and not [n for n in layer if "ollama" in n]  # the engine is not in it
    # The test profile is a CPU image: the double's placeholder GPU backends are never written.
    assert info["engine"]["entries"] >= 2
    assert sorted(d["path"] for d in info["engine"]["dropped_backends"]) == [
        "lib/ollama/cuda_v12", "lib/ollama/cuda_v13", "lib/ollama/vulkan"]
    assert "engine-install" in info["stage_seconds"]
    assert set(info["stage_seconds"]) >= {"config", "bootstrap", "packages", "customize", "binary", "total"}
    assert outputs.iso.read_text() == "iso\n"
    assert outputs.sha256.read_text().split() == [info["iso"]["sha256"], outputs.iso.name]
    assert info["artifacts"][0]["sha256"] == profile.ollama.archive.sha256  # type: ignore[union-attr]

    warm = build_iso(profile, out, cache, options)
    warm_calls = calls(fake_live_build)
    assert "bootstrap" not in warm_calls
    assert not [c for c in warm_calls if c.startswith("chroot_install-packages")]
    assert "chroot_hooks" in warm_calls and "binary_iso" in warm_calls
    # No apt after the restored layer: customize keeps the archives out, the binary stage unpacks
    # the cached tools chroot.
    assert "binary_chroot" not in warm_calls and not [c for c in warm_calls if c.startswith("chroot_archives")]
    assert not [c for c in warm_calls if c.startswith("chroot_prep") and c.split()[2] == "all"]
    assert warm_calls.index("chroot_prep install all-except-archives") < warm_calls.index("chroot_hooks")
    warm_info = json.loads(warm.build_info.read_text())
    assert warm_info["package_layer"] == {**info["package_layer"], "from_cache": True}
    assert warm_info["binary_tools"] == {**info["binary_tools"], "from_cache": True}

    build_iso(profile, out, cache, options, use_cache=False)
    cold_again = calls(fake_live_build)
    assert "bootstrap" in cold_again and "binary_chroot" in cold_again


@pytest.mark.skipif(not Path("/usr/lib/live/build/binary").is_file(), reason="live-build not installed")
def test_binary_helpers_follow_live_builds_own_order(tmp_path: Path) -> None:
    """The binary phase runs `lb binary`'s helpers as live-build lists them, but for the splash."""
    script = Path("/usr/lib/live/build/binary").read_text()
    theirs = [h for h in re.findall(r"^lb (binary_[a-z0-9_-]+)", script, flags=re.M)
              if h not in ("binary_chroot", "binary_bootloader_splash")]
    phase = image_phase(tmp_path / "tools.tar.zst", reuse_tools=True)
    ours = [c[1] for c in phase.commands if isinstance(c, tuple) and c[0] == "lb" and c[1].startswith("binary_")]
    assert ours == theirs
    assert "-newermt" in script and any("-newermt" in " ".join(c) for c in phase.commands if isinstance(c, tuple))
    # `lb installer` is left out because no profile builds an installer.
    assert ("lb", "installer") not in phase.commands
    for name in ("test", "cpu", "nvidia", "intel", "amd", "default"):
        args = lb_config_args(load_profile(name))
        assert args[args.index("--debian-installer") + 1] == "none"


def test_changed_package_list_misses_the_layer(fake_live_build: Path, options: ArtifactOptions,
                                               tmp_path: Path) -> None:
    import dataclasses

    profile = load_profile("test")
    build_iso(profile, tmp_path / "out", tmp_path / "cache", options)
    calls(fake_live_build)
    more = dataclasses.replace(profile, packages=("htop",))
    outputs = build_iso(more, tmp_path / "out", tmp_path / "cache", options)
    assert "chroot_install-packages install" in calls(fake_live_build)
    assert json.loads(outputs.build_info.read_text())["package_layer"]["from_cache"] is False


def test_failure_shows_the_log_tail_and_leaves_no_iso(fake_live_build: Path, options: ArtifactOptions,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_AT", "chroot_hooks")
    profile = load_profile("test")
    with pytest.raises(LiveBuildError) as err:
        build_iso(profile, tmp_path / "out", tmp_path / "cache", options)
    message = str(err.value)
    assert "`lb chroot_hooks` failed (exit 1) during customize" in message
    assert "04-enable-units.hook.chroot failed" in message
    assert "hook output line 59" in message and "hook output line 10\n" not in message  # the last 40 lines
    assert f"full log: {tmp_path / 'cache/work/test/build.log'}" in message
    assert not output_names(profile, tmp_path / "out").iso.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_failure_leaves_nothing_mounted_in_the_chroot(fake_live_build: Path, options: ArtifactOptions,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_AT", "chroot_hooks")
    monkeypatch.setenv("MOUNT_PROC", "1")
    build_dir = tmp_path / "cache/work/test"
    try:
        with pytest.raises(LiveBuildError):
            build_iso(load_profile("test"), tmp_path / "out", tmp_path / "cache", options)
        assert (build_dir / "build.log").is_file()  # kept for the user to read
        assert mounts_below(build_dir) == []
    finally:
        release_mounts(build_dir)
