"""llama-server (the launcher): model names resolved to their GGUF blob, the command line, waiting
for a model that is not in the store yet, and one-line errors for settings it cannot use."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from builder import facts
from tests.fixtures.gpu import clean_env, lib, program

llama = lib("llama_server")
common = lib("common")
GGUF = b"GGUF\x03\x00\x00\x00" + b"\x00" * 24


def add_model(store: Path, name: str, data: bytes = GGUF, host: str = "registry.ollama.ai",
              namespace: str = "library") -> Path:
    """An Ollama store entry: config blob, weights blob (a model layer), manifest."""
    model, _, tag = name.partition(":")
    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    (blobs / f"sha256-{digest}").write_bytes(data)
    manifest = {"schemaVersion": 2, "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                               "digest": "sha256:" + "0" * 64, "size": 2},
                "layers": [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64},
                           {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
                            "size": len(data)}]}
    path = store / "manifests" / host / namespace / model / (tag or "latest")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return blobs / f"sha256-{digest}"


def conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llama-server.conf"
    path.write_text(text)
    return path


def test_in_image_facts_match_the_builders() -> None:
    assert llama.CONF_FILES == facts.LLAMA_CONF_FILES
    assert (llama.LLAMA_BIN, llama.LLAMA_PORT, llama.UNIT) == (facts.LLAMA_BIN, facts.LLAMA_PORT, facts.LLAMA_UNIT)
    assert llama.MODELS_DIR + "/" == facts.MODELS_DIR
    assert f"{facts.OLLAMA_LIB}/llama-server" == facts.LLAMA_BIN


@pytest.mark.parametrize(("name", "where"), [
    ("tiny", "registry.ollama.ai/library/tiny/latest"),
    ("tiny:q4", "registry.ollama.ai/library/tiny/q4"),
    ("me/tiny:1", "registry.ollama.ai/me/tiny/1"),
    ("hf.co/me/tiny:Q4_K_M", "hf.co/me/tiny/Q4_K_M"),
])
def test_names_map_to_ollamas_manifest_paths(tmp_path: Path, name: str, where: str) -> None:
    assert llama.manifest_path(tmp_path, name) == tmp_path / "manifests" / where


def test_a_name_resolves_to_the_weights_layers_blob(tmp_path: Path) -> None:
    blob = add_model(tmp_path, "tiny:latest")
    assert llama.resolve(tmp_path, "tiny") == blob
    assert llama.resolve(tmp_path, "tiny:latest") == blob
    other = add_model(tmp_path, "tiny:v2", GGUF + b"2", namespace="me")
    assert llama.resolve(tmp_path, "me/tiny:v2") == other


def test_a_path_under_the_store_resolves_to_itself(tmp_path: Path) -> None:
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf/own.gguf").write_bytes(GGUF)
    assert llama.resolve(tmp_path, f"{tmp_path}/gguf/own.gguf") == tmp_path / "gguf/own.gguf"


@pytest.mark.parametrize("reference", ["/etc/passwd.gguf", "Bad Name", "x;reboot", "/var/lib/x/../../etc/a.gguf"])
def test_a_reference_outside_the_store_or_malformed_is_a_config_error(tmp_path: Path, reference: str) -> None:
    with pytest.raises(common.ConfigError, match="NEURALDRIVE_LLAMA_MODEL"):
        llama.resolve(tmp_path, reference)


def test_a_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "secret.gguf").write_bytes(GGUF)
    (tmp_path / "store/link.gguf").symlink_to(tmp_path / "secret.gguf")
    with pytest.raises(common.ConfigError):
        llama.resolve(tmp_path / "store", f"{tmp_path}/store/link.gguf")


def test_missing_or_not_gguf_is_worth_waiting_for(tmp_path: Path) -> None:
    with pytest.raises(llama.ModelNotReadyError, match=r"model 'tiny' is not in the store .*POST /api/pull"):
        llama.resolve(tmp_path, "tiny")
    blob = add_model(tmp_path, "half:latest")
    blob.unlink()  # a pull that has written the manifest but not the blob
    with pytest.raises(llama.ModelNotReadyError, match="is not in the store yet"):
        llama.resolve(tmp_path, "half")
    add_model(tmp_path, "text:latest", b"not a model at all")
    with pytest.raises(llama.ModelNotReadyError, match="is not a GGUF file"):
        llama.resolve(tmp_path, "text")


def test_command_line_carries_every_option(tmp_path: Path) -> None:
    settings = common.Settings({"NEURALDRIVE_LLAMA_MODEL": "tiny:latest", "NEURALDRIVE_LLAMA_PORT": "11440",
                                "NEURALDRIVE_LLAMA_N_GPU_LAYERS": "35", "NEURALDRIVE_LLAMA_CTX_SIZE": "4096",
                                "NEURALDRIVE_LLAMA_BATCH_SIZE": "2048", "NEURALDRIVE_LLAMA_THREADS": "6",
                                "NEURALDRIVE_LLAMA_PARALLEL": "2", "NEURALDRIVE_LLAMA_FLASH_ATTN": "on",
                                "NEURALDRIVE_LLAMA_EMBEDDINGS": "1"})
    assert llama.server_argv(settings, Path("/m/blob")) == [
        facts.LLAMA_BIN, "--model", "/m/blob", "--alias", "tiny:latest", "--host", "127.0.0.1", "--port", "11440",
        "--offline", "--no-webui", "--n-gpu-layers", "35", "--ctx-size", "4096", "--batch-size", "2048",
        "--threads", "6", "--parallel", "2", "--flash-attn", "on", "--embeddings"]
    bare = llama.server_argv(common.Settings({"NEURALDRIVE_LLAMA_MODEL": "/s/own.gguf",
                                              "NEURALDRIVE_LLAMA_N_GPU_LAYERS": ""}), Path("/s/own.gguf"))
    assert bare[4:6] == ["own.gguf", "--host"] and bare[-2:] == ["--flash-attn", "auto"]
    assert "--n-gpu-layers" not in bare and "--embeddings" not in bare


@pytest.mark.parametrize(("key", "value", "message"), [
    ("NEURALDRIVE_LLAMA_FLASH_ATTN", "true", "is not one of on, off, auto"),
    ("NEURALDRIVE_LLAMA_THREADS", "0", "must be at least 1"),
    ("NEURALDRIVE_LLAMA_CTX_SIZE", "big", "is not a whole number"),
])
def test_bad_settings_are_config_errors(key: str, value: str, message: str) -> None:
    with pytest.raises(common.ConfigError, match=message):
        llama.server_argv(common.Settings({"NEURALDRIVE_LLAMA_MODEL": "x", key: value}), Path("/b"))


def test_waits_once_logged_then_execs_when_the_model_appears(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "models"
    settings = conf(tmp_path, "NEURALDRIVE_LLAMA_MODEL=tiny\nNEURALDRIVE_LLAMA_THREADS=2\n")
    calls: list[list[str]] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            add_model(store, "tiny:latest")

    def execv(path: str, argv: list[str]) -> None:
        calls.append(argv)
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        llama.main(["--conf", str(settings), "--models", str(store), "--binary", "/x/llama-server"], execv, sleep)
    assert sleeps == [llama.WAIT_S] * 3
    out = capsys.readouterr().out
    assert out.count("waiting: model 'tiny' is not in the store") == 1  # said once, not every round
    assert calls[0][:3] == ["/x/llama-server", "--model", str(next((store / "blobs").iterdir()))]
    assert "serving tiny from" in out


def test_an_unusable_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    add_model(tmp_path / "models", "tiny:latest")
    for text, message in (("NEURALDRIVE_LLAMA_MODEL=tiny\nNEURALDRIVE_LLAMA_FLASH_ATTN=yes\n", "FLASH_ATTN"),
                          ("NEURALDRIVE_LLAMA_MODEL=\n", "NEURALDRIVE_LLAMA_MODEL is empty"),
                          ("NEURALDRIVE_LLAMA_MODEL=../../etc/shadow\n", "is not an Ollama model name")):
        result = subprocess.run([*program("usr/lib/neuraldrive/llama-server"), "--conf", str(conf(tmp_path, text)),
                                 "--models", str(tmp_path / "models")],
                                capture_output=True, text=True, env=clean_env(), timeout=30, check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("llama-server: ") and message in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_status_line(tmp_path: Path) -> None:
    store = tmp_path / "models"
    on = conf(tmp_path, "NEURALDRIVE_LLAMA_ENABLED=1\nNEURALDRIVE_LLAMA_MODEL=tiny\n")

    def run(state: str) -> object:
        return lambda argv: common.CmdResult(0 if state == "active" else 3, state + "\n", "")

    assert llama.status_line(run("active"), [on], store, lambda port: "not answering (refused)") == (
        f"llama.cpp tiny  waiting: model 'tiny' is not in the store ({store}); pull it through the gateway "
        "(POST /api/pull) and llama-server starts within 5 s")
    add_model(store, "tiny:latest")
    assert llama.status_line(run("active"), [on], store, lambda port: f"ready on {port}") == (
        "llama.cpp tiny  ready on 11440")
    assert llama.status_line(run("failed"), [on], store).endswith("tiny  unit failed")
    (store / "manifests").rename(store / "unreadable")  # as the admin sees a store it may not read
    assert llama.status_line(run("active"), [on], store, lambda port: "ready") == "llama.cpp tiny  ready"
    off = conf(tmp_path, "NEURALDRIVE_LLAMA_ENABLED=0\nNEURALDRIVE_LLAMA_MODEL=tiny\n")
    assert llama.status_line(run("inactive"), [off], store) is None


def test_neuraldrive_llama_without_llama_server_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    admin = lib("neuraldrive")
    ctx = admin.Context(common.Settings({}), run=lambda argv: common.CmdResult(3, "inactive\n", ""))
    assert admin.main(["llama"], ctx) == 1  # this host has no /etc/neuraldrive/llama-server.conf
    assert "llama: this image does not run llama.cpp's server" in capsys.readouterr().err


def test_library_path_adds_the_detected_backends_dirs(tmp_path: Path) -> None:
    for name in ("cuda_v12", "vulkan"):
        (tmp_path / name).mkdir()
    binary = str(tmp_path / "llama-server")
    assert llama.library_path(binary, "cuda") == f"{tmp_path}:{tmp_path}/cuda_v12"
    assert llama.library_path(binary, "vulkan") == f"{tmp_path}:{tmp_path}/vulkan"
    assert llama.library_path(binary, "cpu") == llama.library_path(binary, "rocm") == str(tmp_path)


def test_health_finding_reports_and_never_fails(tmp_path: Path) -> None:
    on = conf(tmp_path, "NEURALDRIVE_LLAMA_ENABLED=1\nNEURALDRIVE_LLAMA_MODEL=tiny\nNEURALDRIVE_LLAMA_PORT=11441\n")
    assert llama.health_finding([on], lambda port: "ready") == ("ok", "llama-server: ready (tiny)")
    assert llama.health_finding([on], lambda port: "loading the model")[0] == "ok"
    level, message = llama.health_finding([on], lambda port: f"not answering on {port}")
    assert level == "warning" and "not answering on 11441: waiting for model 'tiny' or failed" in message
    off = conf(tmp_path, "NEURALDRIVE_LLAMA_ENABLED=0\n")
    assert llama.health_finding([off], lambda port: "ready") is None


def test_health_against_a_listener(tmp_path: Path) -> None:
    import http.server
    import threading

    class Loading(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Loading)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert llama.health(server.server_address[1]) == "loading the model"
    finally:
        server.shutdown()
    assert llama.health(server.server_address[1]).startswith("not answering")


def test_the_status_function_carries_the_line(tmp_path: Path) -> None:
    status = lib("status")
    on = conf(tmp_path, "NEURALDRIVE_LLAMA_ENABLED=1\nNEURALDRIVE_LLAMA_MODEL=tiny\nNEURALDRIVE_LLAMA_PORT=1\n")
    src = status.Sources(client=None, gpu_env=tmp_path / "gpu.env", state_dir=tmp_path,
                         run=lambda argv: common.CmdResult(3, "failed\n", ""), llama_conf=(str(on),))
    state = status.Status(time=0.0, engine_state="down", engine_version=None, engine_error=None,
                          gpu_backend="cpu", gpu_summary="")
    status._llama(src, state)
    assert state.to_dict()["llama"] == "llama.cpp tiny  unit failed"
    assert status.Status(time=0.0, engine_state="down", engine_version=None, engine_error=None,
                         gpu_backend="cpu", gpu_summary="").to_dict()["llama"] is None
