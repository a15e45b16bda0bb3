"""Render every profile's live-build tree and check it as live-build and systemd will see it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.errors import VMError
from builder.image.lbconfig import lb_config_args
from builder.image.render import ROOT, render_tree
from builder.profile import load_profile
from builder.vm.media import menu_entry_append
from tests.fixtures.trees import INCLUDES, PROFILES, staged_for, text_files


@pytest.mark.parametrize("name", PROFILES)
def test_expected_files(trees: dict[str, Path], name: str) -> None:
    tree = trees[name]
    for relative in [
        "auto/config",
        "config/hooks/live/01-users.hook.chroot",
        "config/hooks/live/03-install-extras.hook.chroot",
        "config/hooks/live/04-enable-units.hook.chroot",
        "config/hooks/live/06-update-done.hook.chroot",
        "config/hooks/live/99-check-no-secrets.hook.chroot",
        "config/hooks/normal/5020-update-glx-alternative.hook.chroot",
        "config/package-lists/base.list.chroot",
        "config/bootloaders/grub-pc/grub.cfg",
        "config/bootloaders/grub-pc/config.cfg",
        f"{INCLUDES}/etc/neuraldrive/ollama.conf",
        f"{INCLUDES}/etc/neuraldrive/Caddyfile",
        f"{INCLUDES}/etc/systemd/system/neuraldrive-ollama.service",
        f"{INCLUDES}/etc/systemd/system/neuraldrive-ollama@.service",
        f"{INCLUDES}/etc/nftables.conf",
        "config/neuraldrive-artifacts/ollama-linux-amd64.tar.zst",
    ]:
        assert (tree / relative).is_file(), relative
    for hook in (tree / "config/hooks").glob("*/*.hook.chroot"):
        assert os.access(hook, os.X_OK), f"{hook.name} lost its exec bit"
    for program in (tree / INCLUDES / "usr/lib/neuraldrive").iterdir():
        if program.is_file():
            assert os.access(program, os.X_OK), program.name
    assert not list(tree.rglob("*.j2")), "unrendered template left in the tree"


@pytest.mark.parametrize("name", PROFILES)
def test_nothing_left_unrendered(trees: dict[str, Path], name: str) -> None:
    for path in text_files(trees[name]):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert "{{" not in text and "{%" not in text, path


@pytest.mark.parametrize("name", PROFILES)
def test_package_lists_follow_gpu_vendors(trees: dict[str, Path], name: str) -> None:
    profile = load_profile(name)
    lists = {p.name for p in (trees[name] / "config/package-lists").glob("*.list.chroot")}
    assert lists == {"base.list.chroot"} | {f"gpu-{v}.list.chroot" for v in profile.gpu.vendors}
    packages = " ".join(p.read_text() for p in (trees[name] / "config/package-lists").glob("*.list.chroot"))
    if "nvidia" in profile.gpu.vendors:
        for pkg in ("nvidia-kernel-dkms", "linux-headers-amd64", "nvidia-smi", "libcuda1", "nvidia-modprobe",
                    "nvidia-persistenced", "firmware-nvidia-gsp"):
            assert re.search(rf"^{pkg}$", packages, re.MULTILINE), pkg
    else:
        assert "nvidia" not in packages
    assert ("firmware-amd-graphics" in packages) == ("amd" in profile.gpu.vendors)
    assert re.search(r"^openssh-server$", packages, re.MULTILINE)  # every image: keys on the stick start sshd
    assert re.search(r"^zstd$", packages, re.MULTILINE), "initramfs falls back to gzip without zstd"


@pytest.mark.parametrize("name", PROFILES)
def test_hooks_are_valid_shell(trees: dict[str, Path], name: str) -> None:
    scripts = [*(trees[name] / "config/hooks").glob("*/*.hook.chroot"), trees[name] / "auto/config"]
    scripts += [p for p in (trees[name] / INCLUDES / "usr/lib/neuraldrive").iterdir()
                if p.is_file() and p.read_text(errors="replace").startswith("#!/bin/sh")]
    for script in scripts:
        subprocess.run(["sh", "-n", str(script)], check=True)
        subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(["shellcheck", "--shell=sh", "--severity=warning", *map(str, scripts)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", PROFILES)
def test_install_hook_only_verifies_the_builders_install(trees: dict[str, Path], name: str) -> None:
    """The builder extracts the engine (builder/image/engine.py); hook 03 never unpacks an archive as root."""
    hook = (trees[name] / "config/hooks/live/03-install-extras.hook.chroot").read_text()
    assert "tar " not in hook and "/live-build/config/neuraldrive-artifacts/engine-files.txt" in hook
    for item in staged_for(load_profile(name), Path("x")):
        assert (trees[name] / "config/neuraldrive-artifacts" / item.artifact.name).is_file()


@pytest.mark.parametrize("name", PROFILES)
def test_engine_defaults_match_seed(trees: dict[str, Path], name: str) -> None:
    conf = (trees[name] / INCLUDES / "etc/neuraldrive/ollama.conf").read_text()
    values = dict(line.split("=", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert values["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert values["OLLAMA_MODELS"] == "/var/lib/neuraldrive/models/"
    assert values["OLLAMA_KEEP_ALIVE"] == "5m"
    assert values["OLLAMA_MAX_LOADED_MODELS"] == "0"
    assert values["OLLAMA_NUM_PARALLEL"] == "1"


def test_profile_overrides_reach_engine_config(tmp_path: Path, double_archive: Path) -> None:
    custom = tmp_path / "tuned.yaml"
    custom.write_text(
        "extends: nvidia\nollama:\n  keep_alive: 30m\n  flash_attention: true\n  kv_cache_type: q8_0\n"
        "  numa_node: 1\n  cuda_visible_devices: '0'\n"
        "  instances:\n    - name: big\n      port: 11435\n      gpus: '1'\n"
        "    - {name: socket1, port: 11436, gpus: '2,3', numa_node: 1, membind: true, num_parallel: 4,\n"
        "       keep_alive: '-1', context_length: 8192, pinned: ['qwen3:8b']}\n"
        "idle:\n  pinned: [llama3.2, 'qwen3:8b']\n"
    )
    profile = load_profile(str(custom))
    tree = render_tree(profile, tmp_path / "tree", staged_for(profile, double_archive))
    conf = (tree / INCLUDES / "etc/neuraldrive/ollama.conf").read_text()
    for line in ("OLLAMA_KEEP_ALIVE=30m", "OLLAMA_FLASH_ATTENTION=1", "OLLAMA_KV_CACHE_TYPE=q8_0",
                 "CUDA_VISIBLE_DEVICES=0"):
        assert line in conf.splitlines()
    unit = (tree / INCLUDES / "etc/systemd/system/neuraldrive-ollama.service").read_text()
    assert "ExecStart=/usr/bin/numactl --cpunodebind=1 /usr/local/bin/ollama serve" in unit
    assert "numactl" in (tree / "config/package-lists/base.list.chroot").read_text()
    instances = (tree / "config/hooks/live/05-instances.hook.chroot").read_text()
    assert "OLLAMA_HOST=127.0.0.1:11435" in instances and "CUDA_VISIBLE_DEVICES=1" in instances
    socket1 = instances.split("instances/socket1.conf <<'CONF'\n", 1)[1].split("\nCONF\n", 1)[0].splitlines()
    assert socket1 == ["OLLAMA_HOST=127.0.0.1:11436", "OLLAMA_MODELS=/var/lib/neuraldrive/instances/socket1/models/",
                       "CUDA_VISIBLE_DEVICES=2,3", "HIP_VISIBLE_DEVICES=2,3", "GGML_VK_VISIBLE_DEVICES=2,3",
                       "OLLAMA_NUM_PARALLEL=4", "OLLAMA_KEEP_ALIVE=-1", "OLLAMA_CONTEXT_LENGTH=8192",
                       "# neuraldrive-gpu-idle@: the models this instance keeps loaded (not the main engine's).",
                       "NEURALDRIVE_IDLE_PINNED=qwen3:8b"]
    enable = (tree / "config/hooks/live/04-enable-units.hook.chroot").read_text()
    assert "systemctl enable neuraldrive-gpu-idle@socket1.service" in enable
    idle_unit = (tree / INCLUDES / "etc/systemd/system/neuraldrive-gpu-idle@.service").read_text()
    assert idle_unit.index("EnvironmentFile=/etc/neuraldrive/neuraldrive.conf") < idle_unit.index(
        "EnvironmentFile=/etc/neuraldrive/instances/%i.conf")
    assert "After=neuraldrive-ollama@%i.service" in idle_unit
    assert "systemctl enable neuraldrive-healthcheck@socket1.timer" in enable
    units = tree / INCLUDES / "etc/systemd/system"
    check = (units / "neuraldrive-healthcheck@.service").read_text()
    assert "OnFailure=neuraldrive-healthcheck-recover@%i.service" in check
    assert "ExecStart=/usr/lib/neuraldrive/healthcheck --engine-unit neuraldrive-ollama@%i.service" in check
    recover = (units / "neuraldrive-healthcheck-recover@.service").read_text()
    assert ("ExecStart=/usr/lib/neuraldrive/healthcheck --restart-engine --engine-unit "
            "neuraldrive-ollama@%i.service") in recover
    assert "ReadWritePaths=/run/neuraldrive" in recover
    assert ("ExecStart=\nExecStart=/usr/bin/numactl --cpunodebind=1 --membind=1 /usr/local/bin/ollama serve\n"
            in instances) and instances.count("numa.conf") == 1  # only the instance with a node
    assert "neuraldrive-ollama@big.service" in (tree / "config/hooks/live/04-enable-units.hook.chroot").read_text()
    settings = (tree / INCLUDES / "etc/neuraldrive/neuraldrive.conf").read_text().splitlines()
    assert "NEURALDRIVE_IDLE_PINNED='llama3.2 qwen3:8b'" in settings


@pytest.mark.parametrize("name", PROFILES)
def test_lb_config_matches_profile(trees: dict[str, Path], name: str) -> None:
    profile = load_profile(name)
    auto = (trees[name] / "auto/config").read_text()
    args = lb_config_args(profile)
    assert args[args.index("--distribution") + 1] == "trixie"
    assert args[args.index("--archive-areas") + 1] == " ".join(profile.debian.areas)
    assert args[args.index("--mirror-chroot") + 1] == profile.debian.mirrors.chroot
    assert "--binary-image iso-hybrid" in auto.replace(" \\\n    ", " ")
    assert "'grub-efi grub-pc'" in auto


def test_grub_menu_is_short_and_on_serial(trees: dict[str, Path]) -> None:
    cfg = (trees["default"] / "config/bootloaders/grub-pc/config.cfg").read_text()
    assert "set timeout=1" in cfg and "serial" in cfg
    grub = (trees["default"] / "config/bootloaders/grub-pc/grub.cfg").read_text()
    assert "@APPEND_LIVE@" in grub
    assert "modprobe.blacklist=nvidia-current" in grub and "nomodeset" in grub
    assert "toram" in grub and "persistence-encryption=luks" in grub


def test_nftables_ruleset_is_valid_and_default_deny(trees: dict[str, Path]) -> None:
    for tree in trees.values():
        ruleset = (tree / INCLUDES / "etc/nftables.conf").read_text()
        assert "policy drop" in ruleset
        assert "11434" not in ruleset.replace("The engine port 11434", "")
        # SSH only through the set ssh.service's drop-in fills while sshd runs (tests/unit/test_ssh_access.py).
        assert "dport 22" not in ruleset and "tcp dport @ssh_open accept" in ruleset
        if shutil.which("nft") and os.geteuid() == 0:
            result = subprocess.run(["nft", "-c", "-f", str(tree / INCLUDES / "etc/nftables.conf")],
                                    capture_output=True, text=True, check=False)
            assert result.returncode == 0, result.stderr


CADDY = shutil.which("caddy") or "/usr/local/lib/neuraldrive-tools/caddy"


@pytest.mark.skipif(not os.access(CADDY, os.X_OK), reason="caddy not installed (scripts/setup-host installs it)")
@pytest.mark.parametrize("name", ["default", "test"])
def test_caddyfile_is_accepted_by_caddy(trees: dict[str, Path], name: str) -> None:
    caddyfile = trees[name] / INCLUDES / "etc/neuraldrive/Caddyfile"
    result = subprocess.run([CADDY, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
                            capture_output=True, text=True, check=False,
                            env={"NEURALDRIVE_API_KEY": "nd-" + "x" * 43, "PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    # Caddy holds no key (gateway-auth checks it): the adapted config, which Caddy saves as
    # autosave.json, has none, and asks gateway-auth's socket about every API request.
    assert "nd-" + "x" * 43 not in result.stdout and "NEURALDRIVE_API_KEY" not in result.stdout
    assert '"dial":"unix//run/neuraldrive-auth/auth.sock"' in result.stdout


def test_release_trees_hold_no_secret(trees: dict[str, Path]) -> None:
    patterns = [
        re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        re.compile(rb"\bnd-[A-Za-z0-9_-]{32,}"),
        re.compile(rb"\$(1|5|6|y|2b)\$[^\s:]{8,}"),  # crypt(3) password hashes
        re.compile(rb"^ssh-(ed25519|rsa|ecdsa)\S* AAAA", re.MULTILINE),
    ]
    for name, tree in trees.items():
        for path in text_files(tree):
            data = path.read_bytes()
            for pattern in patterns:
                assert not pattern.search(data), f"{name}: {path} matches {pattern.pattern!r}"
        assert not list(tree.rglob("authorized_keys*")), name
        assert not list(tree.rglob("ssh_host_*")), name


def test_authorized_keys_only_when_given(tmp_path: Path, double_archive: Path) -> None:
    from dataclasses import replace

    key = tmp_path / "k.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f test@host\n")
    profile = load_profile("test")
    profile = replace(profile, ssh=replace(profile.ssh, authorized_keys=str(key)))
    tree = render_tree(profile, tmp_path / "tree", staged_for(profile, double_archive))
    target = tree / INCLUDES / "etc/ssh/authorized_keys/neuraldrive-admin"
    assert target.read_text() == key.read_text()
    sshd = (tree / INCLUDES / "etc/ssh/sshd_config.d/neuraldrive.conf").read_text()
    assert "PasswordAuthentication no" in sshd and "PermitRootLogin no" in sshd


def test_render_refuses_an_existing_tree(tmp_path: Path, double_archive: Path) -> None:
    from builder.errors import TreeError

    profile = load_profile("cpu")
    render_tree(profile, tmp_path, staged_for(profile, double_archive))
    with pytest.raises(TreeError, match="already holds"):
        render_tree(profile, tmp_path, staged_for(profile, double_archive))


def test_strict_undefined_names_the_template(tmp_path: Path) -> None:
    from builder.errors import TreeError

    src = tmp_path / "src"
    (src / "includes.chroot/etc").mkdir(parents=True)
    (src / "includes.chroot/etc/x.conf.j2").write_text("{{ profile.no_such_field }}\n")
    with pytest.raises(TreeError, match=r"includes.chroot/etc/x.conf.j2: UndefinedError"):
        render_tree(load_profile("cpu"), tmp_path / "out", [], source_root=src)


@pytest.mark.parametrize(("registered", "switched"), [("/usr/lib/nvidia", False), ("/usr/lib/mesa-diverted", True)])
def test_glx_hook_switches_only_to_a_registered_mesa(tmp_path: Path, registered: str, switched: bool) -> None:
    """live-build's stock glx hook failed the nvidia build: Mesa's alternative is not registered there."""
    calls = tmp_path / "calls"
    fake = tmp_path / "update-alternatives"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n"
                    f"[ \"$1\" = --query ] && printf 'Name: glx\\nAlternative: {registered}\\nPriority: 10\\n'\n"
                    "exit 0\n")
    fake.chmod(0o755)
    hook = ROOT / "hooks.normal/5020-update-glx-alternative.hook.chroot"
    subprocess.run([str(hook)], check=True, env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert ("--quiet --set glx /usr/lib/mesa-diverted" in calls.read_text()) is switched


def test_default_menu_entry_takes_labelled_luks_persistence(trees: dict[str, Path]) -> None:
    cfg = (trees["test"] / "config/bootloaders/grub-pc/grub.cfg").read_text()
    # What live-build makes of its placeholders (binary_grub_cfg), incl. its loopback variable.
    cfg = (cfg.replace("@KERNEL_LIVE@", "/live/vmlinuz").replace("@INITRD_LIVE@", "/live/initrd.img")
           .replace("@APPEND_LIVE@", "boot=live persistence findiso=${iso_path}"))
    assert menu_entry_append(cfg, "encrypted") == "boot=live persistence findiso= persistence-encryption=luks"
    # The default entry (what the LUKS stick test boots) opens only a LUKS container labelled
    # "persistence", never another encrypted disk of the machine.
    assert menu_entry_append(cfg, "neuraldrive").endswith("persistence-encryption=none,lukslabel")
    with pytest.raises(VMError):
        menu_entry_append(cfg, "missing")
