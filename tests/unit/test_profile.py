"""Profile loading: the shipped profiles, inheritance, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import ProfileError
from builder.profile import PROFILES_DIR, load_profile

SHIPPED = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "custom.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_required_profiles_exist() -> None:
    assert {"default", "cpu", "nvidia", "amd", "intel", "test"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.debian.suite == "trixie"


def test_vendor_selection_and_inheritance() -> None:
    assert load_profile("default").gpu.vendors == ("nvidia", "amd", "intel")
    assert load_profile("cpu").gpu.vendors == ()
    assert load_profile("nvidia").gpu.vendors == ("nvidia",)
    # Inherited from default, unchanged by the child:
    assert load_profile("nvidia").gateway.port == 8443
    assert load_profile("cpu").ollama.keep_alive == "5m"


def test_seed_engine_defaults() -> None:
    o = load_profile("default").ollama
    assert (o.keep_alive, o.max_loaded_models, o.num_parallel) == ("5m", 0, 1)


def test_release_profiles_are_secure_by_default() -> None:
    for name in SHIPPED:
        profile = load_profile(name)
        if profile.release:
            assert not profile.ssh.enabled, name
            assert profile.ssh.authorized_keys is None, name
            assert profile.ollama.archive is None, f"{name}: release profiles use the lock file"
    test = load_profile("test")
    assert not test.release
    assert test.ssh.enabled and test.ssh.authorized_keys is None  # the key comes per run


def test_release_flag_is_not_inherited(tmp_path: Path) -> None:
    child = write(tmp_path, "extends: test\n")
    assert load_profile(child).release is True


def test_path_profile_with_extends_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "extends: cpu\ngateway:\n  port: 9443\n")
    profile = load_profile(path)
    assert profile.gateway.port == 9443
    assert profile.gpu.vendors == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus: 1\n", "bogus: unknown key"),
        ("gateway:\n  prot: 1\n", "gateway.prot: unknown key"),
        ("gateway:\n  port: '8443'\n", "gateway.port: must be an integer"),
        ("gateway:\n  port: 70000\n", "gateway.port: 70000 is not in 1-65535"),
        ("gateway:\n  port: 11434\n", "gateway.port"),
        ("ssh:\n  enabled: yes please\n", "ssh.enabled: must be true or false"),
        ("gpu:\n  vendors: [nvidia, 3dfx]\n", "gpu.vendors: '3dfx' is not one of"),
        ("gpu:\n  vendors: nvidia\n", "gpu.vendors: must be a list"),
        ("debian:\n  suite: bookworm\n", "debian.suite: 'bookworm'"),
        ("debian:\n  areas: [main, universe]\n", "debian.areas: 'universe'"),
        ("debian:\n  areas: [main]\ngpu:\n  vendors: [nvidia]\n", "needs archive area"),
        ("debian:\n  mirrors:\n    chroot: ftp://x\n", "debian.mirrors.chroot"),
        ("ollama:\n  keep_alive: forever\n", "ollama.keep_alive"),
        ("ollama:\n  num_parallel: 0\n", "ollama.num_parallel"),
        ("ollama:\n  kv_cache_type: q3\n", "ollama.kv_cache_type"),
        ("ollama:\n  extra_env:\n    OLLAMA_HOST: 0.0.0.0:11434\n", "loopback only"),
        ("ollama:\n  extra_env:\n    lower: x\n", "not an environment variable name"),
        ("ollama:\n  instances:\n    - name: a\n      port: 8443\n", "already used by gateway.port"),
        ("ollama:\n  instances:\n    - port: 11435\n", "ollama.instances[0].name: required"),
        ("ollama:\n  instances:\n    - {name: a, port: 11500, membind: true}\n", "ollama.instances[0].membind: needs"),
        ("ollama:\n  instances:\n    - {name: a, port: 11500, num_parallel: 0}\n",
         "ollama.instances[0].num_parallel: 0 is not in 1-256"),
        ("ollama:\n  instances:\n    - {name: a, port: 11500, keep_alive: soon}\n", "ollama.instances[0].keep_alive"),
        ("ollama:\n  archive:\n    version: 1.0\n    url: http://x/a\n    sha256: abc\n", "ollama.archive.sha256"),
        ("image:\n  compression: rar\n", "image.compression"),
        ("image:\n  compression_level: 23\n", "image.compression_level: 23 is outside 1-22 for zstd"),
        ("image:\n  compression: xz\n  compression_level: 5\n", "xz takes no compression level"),
        ("image:\n  compression_level: fast\n", "image.compression_level"),
        ("image:\n  name: Neural Drive\n", "image.name"),
        ("image:\n  volume: ''\n", "image.volume"),
        ("ssh:\n  enabled: true\n  authorized_keys: nope.pub\n", "ssh.authorized_keys: 'nope.pub': no such file"),
        ("packages: ['bad package']\n", "packages: 'bad package'"),
        ("idle:\n  pinned: ['llama3.2', 'x y']\n", "idle.pinned: 'x y' is not an Ollama model name"),
        ("preload:\n  store: .\n  models: ['Bad Model']\n", "preload.models: 'Bad Model'"),
        ("preload:\n  store: nowhere\n  models: [tiny]\n", "preload.store: 'nowhere': not an Ollama models dir"),
        ("preload:\n  models: [tiny]\n", "preload.store: None"),
        ("idle:\n  idle_timeout: 0\n", "idle"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("gateway: [\n", "not valid YAML"),
        ("extends: nonexistent\n", "extends: no profile named"),
    ],
)
def test_bad_input_is_rejected_with_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, ("" if text.startswith(("extends", "- ")) else "extends: default\n") + text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(err.value).startswith(str(tmp_path / "custom.yaml"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "extends: ./b.yaml\n", "a.yaml")
    write(tmp_path, "extends: ./a.yaml\n", "b.yaml")
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(str(tmp_path / "a.yaml"))


def test_unknown_profile_name_lists_known() -> None:
    with pytest.raises(ProfileError, match=r"known: .*cpu"):
        load_profile("no-such-profile")


ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"


def test_authorized_keys_relative_to_profile(tmp_path: Path) -> None:
    (tmp_path / "admin.pub").write_text(f"{ED25519} test\n")
    profile = load_profile(write(tmp_path, "extends: default\nssh:\n  enabled: true\n  authorized_keys: admin.pub\n"))
    assert profile.ssh.authorized_keys == "admin.pub"
