"""The operator page in headless Chromium, served by the real Caddy with the rendered Caddyfile, the real
gateway-auth and the Ollama double as the engine: loads with the key, refuses a wrong one clearly, pulls
with progress, streams a chat, shows benchmark figures. Screenshots go to out/screenshots/."""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.profile import load_profile
from builder.proof.ollama_double import SCRIPT, write_model
from tests.conftest import _free_port, _wait_ready
from tests.fixtures.gateway import API, auth_socket_fixture, caddy_gateway, keys_fixture, request  # noqa: F401
from tests.fixtures.gpu import CHROOT, FakeRunner, lib
from tests.image.helpers import PAGE_BUDGET, PAGE_BYTES_JS

status = lib("status")
status_gpus = lib("status_gpus")
gpu = lib("gpu")
common = lib("common")
ollama = lib("ollama")
A100_SMI = (Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "nvidia-smi-a100x4.csv").read_text()
WWW = CHROOT / "usr/share/neuraldrive/www"
SHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[str]:
    """The double, with a 'registry' to pull from."""
    models, registry = tmp_path / "models", tmp_path / "registry"
    models.mkdir()
    registry.mkdir()
    write_model(models, "tiny", 4096)
    write_model(registry, "pulled:1b", 3 * 2**20)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update(OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(models), HOME=str(tmp_path / "home"),
               OLLAMA_TESTDOUBLE_REGISTRY=str(registry))
    log = tmp_path / "double.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    assert _wait_ready(proc, f"http://127.0.0.1:{port}", log)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def site(tmp_path: Path, auth_socket: Path, engine: str) -> Iterator[str]:
    page = tmp_path / "page"
    page.mkdir()
    # Two A100s (nvidia-smi's recorded answer) and two instances, one answering (the double), one not.
    gpu_env = tmp_path / "gpu.env"
    gpu_env.write_text(gpu.GpuState(present=("nvidia",), vendor="nvidia", count=2, driver="loaded", backend="cuda",
                                    devices=("0000:17:00.0:10de:20f1", "0000:65:00.0:10de:20f1")).render())
    instances = tmp_path / "instances"
    instances.mkdir()
    (instances / "gpu1.conf").write_text(f"OLLAMA_HOST={engine}\n")
    (instances / "gpu9.conf").write_text("OLLAMA_HOST=127.0.0.1:9\n")
    run = FakeRunner({status_gpus.NVIDIA_QUERY: (0, A100_SMI, ""), ("systemctl", "is-active"): (0, "active\n", "")})
    state = status.collect(status.Sources(ollama.Client(engine), gpu_env, tmp_path, run,
                                          settings=common.Settings({}), instances_dir=instances))
    # The image version (os-release IMAGE_VERSION) as the status function reports it.
    (page / "status.json").write_text(json.dumps({**state.to_dict(), "version": "0.9.0-test"}))
    moves = {"127.0.0.1:11434": engine, "/run/neuraldrive/page": str(page), "/usr/share/neuraldrive/www": str(WWW)}
    with caddy_gateway(tmp_path, load_profile("test"), auth_socket, moves) as base:
        yield base


def test_static_files_are_open_status_needs_the_key(site: str) -> None:
    assert request(site, "GET", "/", None)[0] == 200
    assert request(site, "GET", "/js/main.js", None)[0] == 200
    assert request(site, "GET", "/nd/status.json", None)[0] == 401
    code, body = request(site, "GET", "/nd/status.json", f"Bearer {API}")
    assert code == 200 and json.loads(body)["engine_state"] == "running"
    assert request(site, "GET", "/nd/../gpu.env", f"Bearer {API}")[0] == 404


def test_page_files_are_small_and_load_nothing_from_elsewhere() -> None:
    """No external URL, no inline script or style (the CSP would block them), within the budget."""
    files = sorted(p for p in WWW.rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".html", ".css", ".js"}
    assert sum(p.stat().st_size for p in files) <= PAGE_BUDGET
    for path in files:
        text = path.read_text()
        assert "://" not in text, path
        assert not re.search(r"\bimport\s*\(|\beval\s*\(|new Function|innerHTML|\.style\b", text), path
    html = (WWW / "index.html").read_text()
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html)
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="js/main.js">']
    assert "<script type=\"module\" src=\"js/main.js\"></script>" in html  # no inline body


def test_csp_is_strict(site: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(site + "/", timeout=10, context=context) as response:
        csp = response.headers["Content-Security-Policy"]
    rules = {name: value for name, _, value in (part.strip().partition(" ") for part in csp.split(";")) if name}
    assert rules["default-src"] == "'none'" and rules["script-src"] == rules["connect-src"] == "'self'"
    assert "unsafe" not in csp and "http" not in csp


def _wait(driver: Any, check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"page: no {what}"
        time.sleep(0.1)


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="chromium/chromedriver not installed (scripts/setup-host)")
def test_page_in_chromium(site: str) -> None:
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--ignore-certificate-errors", "--window-size=1100,1400",
                "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    SHOTS.mkdir(parents=True, exist_ok=True)
    by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731
    try:
        driver.get(site + "/")
        by_id("key").send_keys("nd-wrong-key")
        by_id("key-form").submit()
        _wait(driver, lambda: "refused (HTTP 401)" in by_id("message").text, "wrong-key message")
        driver.save_screenshot(str(SHOTS / "1-wrong-key.png"))
        start = time.monotonic()
        by_id("key").send_keys(API)
        by_id("key-form").submit()
        _wait(driver, lambda: by_id("main").is_displayed() and "running" in by_id("status").text, "status")
        print(f"\npage load with the key (status + models through the gateway): {time.monotonic() - start:.2f} s")
        assert "tiny:latest" in by_id("models").text and "Disk left" in by_id("status").text
        assert "Image\nNeuralDrive 0.9.0-test" in by_id("status").text
        on_disk = sum(p.stat().st_size for p in WWW.rglob("*") if p.is_file())
        assert int(driver.execute_script(PAGE_BYTES_JS)) == on_disk <= PAGE_BUDGET  # every file, nothing else
        gpus = driver.find_elements(By.CSS_SELECTOR, "#gpus tr")
        # gpu.env names two; nvidia-smi also reports a third, without memory figures.
        assert [g.get_attribute("data-slot") for g in gpus] == ["0000:17:00.0", "0000:65:00.0", "0000:b3:00.0"]
        assert gpus[0].text == "0 0000:17:00.0 NVIDIA A100-PCIE-40GB 20.0 GiB (50%) 40.0 GiB"
        assert gpus[1].text == "1 0000:65:00.0 NVIDIA A100-PCIE-40GB 4.0 MiB (0%) 40.0 GiB"
        assert gpus[2].text == "2 0000:b3:00.0 NVIDIA A100-PCIE-40GB unknown unknown"
        shown = {r.get_attribute("data-name"): r for r in driver.find_elements(By.CSS_SELECTOR, "#instances tr")}
        assert shown.keys() == {"gpu1", "gpu9"}
        assert shown["gpu1"].get_attribute("data-health") == "ok" and "/i/gpu1/" in shown["gpu1"].text
        assert shown["gpu9"].get_attribute("data-health") == "error"
        assert "down: engine not answering" in shown["gpu9"].text
        assert "instance gpu9" in by_id("status").text  # and the health line says which
        driver.save_screenshot(str(SHOTS / "2-status.png"))
        by_id("pull-name").send_keys("pulled:1b")
        by_id("pull-form").submit()
        _wait(driver, lambda: by_id("pull-status").text == "success", "pull success")
        assert by_id("pull-progress").get_attribute("value") == "1"
        _wait(driver, lambda: "pulled:1b" in by_id("models").text, "pulled model in the list")
        driver.save_screenshot(str(SHOTS / "3-pull.png"))
        by_id("chat-text").send_keys("hello")
        by_id("chat-form").submit()
        _wait(driver, lambda: by_id("chat-reply").get_attribute("data-done") == "true", "chat reply")
        assert by_id("chat-reply").text == "test double reply"
        assert int(by_id("chat-reply").get_attribute("data-chunks") or 0) == 3  # streamed, token by token
        by_id("bench-form").submit()
        _wait(driver, lambda: by_id("bench-table").is_displayed(), "benchmark figures")
        rows = by_id("bench-rows").text
        assert "generation (tokens/s) 50.0 50.0 50.0" in rows and "prompt (tokens/s) 400.0 400.0 400.0" in rows
        driver.save_screenshot(str(SHOTS / "4-chat-bench.png"))
        blocked = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert blocked == []
        by_id("forget").click()
        assert driver.execute_script("return sessionStorage.length") == 0
    finally:
        print(f"screenshots: {SHOTS}")
        driver.quit()
