"""Hostile profiles and options: every one is refused with one line and exit 2, never a traceback,
and nothing a profile says can break out of the shell, unit, env or Caddy file it lands in."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from builder.errors import ProfileError
from builder.image.render import render_tree
from builder.profile import load_profile
from tests.fixtures.hostile import INCLUDES, refused, run, write

# -- 1. values that would escape the file they land in ------------------------------------------

@pytest.mark.parametrize(
    ("text", "message"),
    [
        # `source` is written into auto/config, which `lb config` runs as root.
        ('extends: cpu\nsource: "x\\ntouch /pwned"\n', "source: unknown key"),
        ("extends: cpu\nname: evil\n", "name: unknown key"),
        # A newline ends the heredoc in hooks/05-instances.
        ('extends: cpu\nollama:\n  instances:\n    - name: a\n      port: 11500\n'
         '      models_dir: "/var/lib/neuraldrive/m\\nCONF\\ntouch /pwned\\ncat <<CONF"\n',
         "ollama.instances[0].models_dir: control character U+000A"),
        # systemd ends an env line at \r: a second variable would defeat the OLLAMA_HOST ban.
        ('extends: cpu\nollama:\n  extra_env:\n    FOO: "x\\rOLLAMA_HOST=0.0.0.0:11434"\n',
         "ollama.extra_env.FOO: control character U+000D"),
        # `^...$` matches before a trailing newline: block scalars passed every regex check.
        ("extends: cpu\nimage:\n  hostname: |\n    evil\n", "image.hostname: control character U+000A"),
        ("extends: cpu\nimage:\n  version: |\n    1.0\n", "image.version: control character U+000A"),
        ("extends: cpu\npackages:\n  - |\n    curl\n", "packages[0]: control character U+000A"),
        ('extends: cpu\ndescription: "a\\u2028b"\n', "description: control character U+2028"),
        ('extends: cpu\ndescription: "a\\u2029b"\n', "description: control character U+2029"),
        ('extends: cpu\ndescription: "a\\x85b"\n', "description: control character U+0085"),
        ('extends: cpu\ndescription: "a\\x7fb"\n', "description: control character U+007F"),
        ('extends: cpu\ndescription: "a\\x00b"\n', "description: control character U+0000"),
        ('extends: cpu\ndescription: "a\\tb"\n', "description: control character U+0009"),
        ('extends: cpu\ndescription: "\\u202eevil"\n', "description: control character U+202E"),
        ('extends: cpu\ndescription: "\\ud800"\n', "description: control character U+D800"),
        ('extends: cpu\nollama:\n  extra_env:\n    "A\\nB": x\n', "ollama.extra_env: control character U+000A"),
        ('extends: cpu\ndebian:\n  mirrors:\n    chroot: "http://x/\\n--foo"\n', "debian.mirrors.chroot"),
        ('extends: cpu\nollama:\n  instances:\n    - name: a\n      port: 11500\n'
         '      models_dir: /var/lib/neuraldrive/../../../etc\n', "ollama.instances[0].models_dir"),
        ('extends: cpu\nollama:\n  instances:\n    - name: a\n      port: 11500\n'
         "      models_dir: /var/lib/neuraldrive/a b$(id)\n", "ollama.instances[0].models_dir"),
        ('extends: cpu\nollama:\n  cuda_visible_devices: |\n    0\n', "ollama.cuda_visible_devices"),
        ('extends: cpu\nollama:\n  keep_alive: |\n    5m\n', "ollama.keep_alive"),
        ("extends: cpu\nollama:\n  extra_env:\n    FOO: " + "x" * 5000 + "\n", "ollama.extra_env.FOO: longer than"),
    ],
)
def test_values_that_would_break_out_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in refused(tmp_path, text)


def test_a_profile_path_with_a_newline_never_reaches_auto_config(tmp_path: Path) -> None:
    evil = tmp_path / "x\ntouch pwned\n"
    evil.mkdir()
    path = evil / "p.yaml"
    path.write_text("extends: cpu\n")
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    assert "source: control character U+000A" in str(err.value)
    assert "\n" not in str(err.value)


def test_rendered_values_are_quoted_for_their_syntax(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, (
        "extends: cpu\nollama:\n  extra_env:\n    FOO: \"a b'c $HOME \\\\ %n\"\n"
        "  instances:\n    - name: a\n      port: 11500\n      models_dir: /var/lib/neuraldrive/m\n")))
    tree = render_tree(profile, tmp_path / "tree", [])
    conf = (tree / INCLUDES / "etc/neuraldrive/ollama.conf").read_text()
    assert "FOO='a b'\"'\"'c $HOME \\ %n'\n" in conf
    hook = (tree / "config/hooks/live/05-instances.hook.chroot").read_text()
    assert "OLLAMA_MODELS=/var/lib/neuraldrive/m\n" in hook


# -- 2. YAML that used to give a traceback, or was silently merged --------------------------------

@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("extends: cpu\n1: x\n", ":2: mapping key 1 is not a string"),
        ("extends: cpu\ngateway:\n  8443: x\n", ":3: mapping key 8443 is not a string"),
        ("extends: cpu\nnull: x\n", ":2: mapping key None is not a string"),
        ("extends: cpu\ngateway:\n  port: 9443\n  port: 9444\n", ":4: duplicate key 'port'"),
        ("extends: cpu\ngateway:\n  port: 9443\ngateway:\n  mdns: true\n", ":4: duplicate key 'gateway'"),
        ("extends: cpu\nimage: &i {name: x}\n", ":2: anchors and aliases are not allowed"),
        ("extends: cpu\nx: &a 1\ny: *a\n", ":2: anchors and aliases are not allowed"),
        ("extends: cpu\ngateway:\n  <<: {port: 9443}\n", ":3: merge keys (<<) are not allowed"),
        ("extends: cpu\ngateway:\n  port: " + "9" * 5000 + "\n", "not valid YAML"),
        ("extends: cpu\nx: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        # Found by the property test: PyYAML's reader refuses raw control characters in its constructor.
        ('extends: cpu\ndescription: "\x01"\n', ":2: not valid YAML (character U+0001 is not allowed)"),
    ],
)
def test_yaml_that_used_to_crash_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    assert message in refused(tmp_path, text)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_bytes(b"extends: cpu\ndescription: caf\xe9\n")
    with pytest.raises(ProfileError, match=r"custom.yaml:2: not UTF-8"):
        load_profile(str(path))


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.monotonic()
    message = refused(tmp_path, "\n".join(lines) + "\n")
    assert time.monotonic() - start < 1.0
    assert "anchors and aliases are not allowed" in message


def test_cli_maps_hostile_yaml_to_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_bytes(b"extends: cpu\n1: \xff\n")
    result = run("tree", "--profile", str(path), "--no-artifacts", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.startswith("error: ") and result.output.count("\n") == 1


# -- 3. ranges -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gateway:\n  port: 0\n", "gateway.port: 0 is not in 1-65535"),
        ("gateway:\n  port: 65536\n", "gateway.port: 65536 is not in 1-65535"),
        ("gateway:\n  port: 22\nssh:\n  enabled: true\n", "gateway.port: 22 is already used by SSH"),
        ("gateway:\n  port: 11434\n", "gateway.port: 11434 is already used by the engine"),
        ("ollama:\n  instances:\n    - {name: a, port: 11500}\n    - {name: b, port: 11500}\n",
         "ollama.instances[1].port: 11500 is already used by ollama.instances[0].port"),
        ("ollama:\n  instances:\n    - {name: a, port: 11500}\n    - {name: a, port: 11501}\n",
         "ollama.instances[1].name: 'a' is used twice"),
        ("ollama:\n  instances:\n    - {name: a, port: 70000}\n",
         "ollama.instances[0].port: 70000 is not in 1024-65535"),
        ("healthcheck:\n  vram_warn_percent: 0\n", "healthcheck.vram_warn_percent: 0 is not in 1-100"),
        ("healthcheck:\n  disk_warn_percent: 101\n", "healthcheck.disk_warn_percent: 101 is not in 1-100"),
        ("healthcheck:\n  api_timeout: 0\n", "healthcheck.api_timeout: 0 is not in 1-"),
        ("healthcheck:\n  interval_minutes: 0\n", "healthcheck.interval_minutes: 0 is not in 1-1440"),
        ("idle:\n  idle_timeout: -5\n", "idle.idle_timeout: -5 is not in 1-"),
        ("idle:\n  monitoring_interval: 0\n", "idle.monitoring_interval: 0 is not in 1-"),
        ("idle:\n  monitoring_interval: 99999999999\n", "idle.monitoring_interval: 99999999999 is not in 1-"),
        ("ollama:\n  num_parallel: 257\n", "ollama.num_parallel: 257 is not in 1-256"),
        ("ollama:\n  context_length: 16777217\n", "ollama.context_length: 16777217 is not in 1-16777216"),
        ("ollama:\n  max_loaded_models: 65\n", "ollama.max_loaded_models: 65 is not in 0-64"),
        ("ollama:\n  max_queue: -1\n", "ollama.max_queue: -1 is not in 0-"),
        ("ollama:\n  num_threads: 100000\n", "ollama.num_threads: 100000 is not in 0-"),
        ("ollama:\n  numa_node: 5000\n", "ollama.numa_node: 5000 is not in 0-"),
        ("ollama:\n  keep_alive: 99999h\n", "ollama.keep_alive: '99999h' is longer than"),
        ("ollama:\n  keep_alive: '99999999999'\n", "ollama.keep_alive: '99999999999' is longer than"),
        ("gpu:\n  tune:\n    power_limit_watts: 0\n", "gpu.tune.power_limit_watts: 0 is not in 1-"),
    ],
)
def test_out_of_range_numbers(tmp_path: Path, text: str, message: str) -> None:
    assert message in refused(tmp_path, "extends: cpu\n" + text)


@pytest.mark.parametrize("keep_alive", ["5m", "-1", "0", "1h30m", "300", "2.5h", "-1m", "8760h"])
def test_usual_keep_alive_values_pass(tmp_path: Path, keep_alive: str) -> None:
    assert load_profile(write(tmp_path, f"extends: cpu\nollama:\n  keep_alive: '{keep_alive}'\n"))


# -- 5. build.py tree --tree-dir ---------------------------------------------------------------------

def test_tree_never_removes_a_directory_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = run("tree", "--profile", "cpu", "--no-artifacts", "--tree-dir", str(precious))
    assert result.exit_code == 2, result.output
    assert str(precious) in result.output and result.output.count("\n") == 1
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_tree_replaces_its_own_tree(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    assert run("tree", "--profile", "cpu", "--no-artifacts", "--tree-dir", str(target)).exit_code == 0
    (target / "stale").write_text("x")
    result = run("tree", "--profile", "cpu", "--no-artifacts", "--tree-dir", str(target))
    assert result.exit_code == 0, result.output
    assert (target / "auto/config").is_file() and not (target / "stale").exists()


def test_tree_refuses_a_symlink_to_its_own_tree(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    assert run("tree", "--profile", "cpu", "--no-artifacts", "--tree-dir", str(target)).exit_code == 0
    (tmp_path / "link").symlink_to(target)
    result = run("tree", "--profile", "cpu", "--no-artifacts", "--tree-dir", str(tmp_path / "link"))
    assert result.exit_code == 2, result.output
    assert (target / "auto/config").is_file()


# -- 6. the archive server ---------------------------------------------------------------------------

def test_the_archive_server_serves_only_the_named_files(tmp_path: Path) -> None:
    from builder.proof.server import serve_files

    archive = tmp_path / "ollama-linux-amd64.tar.zst"
    archive.write_bytes(b"archive bytes")
    (tmp_path / "secret").write_text("private key")
    with serve_files({archive.name: archive}) as url:
        with urllib.request.urlopen(url + archive.name) as response:
            assert response.read() == b"archive bytes"
        for path in ["", "secret", "./secret", "../" + tmp_path.name + "/secret", "%2e%2e/secret",
                     archive.name + "/", archive.name + "?x", "/" + str(archive)]:
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url + path)
            assert err.value.code == 404, path



def test_lock_patterns_match_the_whole_value() -> None:
    from builder.artifacts.lock import pin_release
    from builder.errors import LockError

    with pytest.raises(LockError, match="is not a release version"):
        pin_release("0.32.7\n", "")


# -- the escaping filters themselves ------------------------------------------------------------------

SHELL_VALUES = ["plain", "a b", "it's", 'say "hi"', "$(id)", "`id`", "back\\slash", "%n", "", "-n", "*", "é µ"]


@pytest.mark.parametrize("value", SHELL_VALUES)
def test_sh_and_envfile_read_back_in_the_shell(tmp_path: Path, value: str) -> None:
    from builder.image.escape import envfile, sh

    out = subprocess.run(["sh", "-c", f"printf %s {sh(value)}"], capture_output=True, text=True, check=True)
    assert out.stdout == value
    (tmp_path / "env").write_text(f"K={envfile(value)}\n", encoding="utf-8")
    out = subprocess.run(["sh", "-c", '. "$1"; printf %s "$K"', "sh", str(tmp_path / "env")],
                         capture_output=True, text=True, check=True)
    assert out.stdout == value


@pytest.mark.parametrize("name", ["sh", "envfile", "unit", "unit_arg", "caddy", "word"])
@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\x1b", "\x85", "\u2028", "\u202e"])
def test_every_filter_refuses_control_characters(name: str, char: str) -> None:
    from builder.errors import TreeError
    from builder.image.escape import FILTERS

    with pytest.raises(TreeError, match="control character"):
        FILTERS[name](f"a{char}b")


def test_unit_caddy_num_word_filters() -> None:
    from builder.errors import TreeError
    from builder.image.escape import caddy, num, unit, unit_arg, word

    assert unit("every 5% of %n") == "every 5%% of %%n"
    assert unit_arg('a "b" $X %i \\') == '"a \\"b\\" $$X %%i \\\\"'
    assert caddy("a b") == '"a b"'
    assert num(8443) == "8443"
    assert word("curl") == "curl"
    for call, value in [(unit, "end\\"), (caddy, "{$NEURALDRIVE_API_KEY}"), (caddy, 'a"b'), (num, True),
                        (num, "1"), (word, "a b"), (word, "-rf")]:
        with pytest.raises(TreeError):
            call(value)  # type: ignore[operator]
