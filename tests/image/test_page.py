"""The operator page and `neuraldrive bench` on the booted image, through QEMU's forwarded gateway port:
the status file and who writes it, the page in headless Chromium (the same checks as
tests/unit/test_page.py: key, wrong key, each GPU and instance, streamed chat, benchmark), and the
figures issue 15 asks for, recorded (never asserted on time): page load time through the gateway, the
page's total size, bench numbers. Screenshots are kept in out/screenshots/image/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.image.helpers import PAGE_BUDGET, PAGE_BYTES_JS, Gateway, record_figure

SHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots" / "image"
STATUS = "/run/neuraldrive/page/status.json"


def _wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"page: no {what}"
        time.sleep(0.2)


def instance_names(host: Any) -> list[str]:
    listed = host.run("ls /etc/neuraldrive/instances").stdout.split()
    return sorted(name.removesuffix(".conf") for name in listed if name.endswith(".conf"))


def page_status(gateway: Gateway, api_key: str) -> dict[str, Any]:
    answer = gateway.request("GET", "/nd/status.json", key=api_key)
    assert answer.status == 200, answer.body[:300]
    return dict(answer.json())


def settled_status(gateway: Gateway, api_key: str) -> dict[str, Any]:
    """The page's status once the engine and every instance answer (they may be restarting after
    other tests; the writer refreshes every 10 s)."""
    found: dict[str, Any] = {}

    def settled() -> bool:
        found.update(page_status(gateway, api_key))
        return found["engine_state"] == "running" and all(i["health"] == "ok" for i in found["instances"])

    _wait(settled, "status with every engine answering", 90)
    return found


def test_status_is_written_by_its_own_sandboxed_unit(host: Any, gateway: Gateway, api_key: str) -> None:
    assert host.service("neuraldrive-status.service").is_running
    with host.sudo():
        owner = host.check_output(f"stat -c '%U %a' {STATUS} /run/neuraldrive/page").split("\n")
        pid = host.check_output("systemctl show -p MainPID --value neuraldrive-status.service")
        uid = host.check_output(f"awk '/^Uid:/ {{print $2}}' /proc/{pid}/status")
    assert owner[0].split()[1] == "644" and owner[1].split()[1] == "755"  # the gateway's user reads it
    assert owner[0].split()[0] != "root" and uid != "0"  # DynamicUser: not root
    assert gateway.request("GET", "/nd/status.json").status == 401  # behind the key
    first = page_status(gateway, api_key)["time"]
    _wait(lambda: page_status(gateway, api_key)["time"] > first, "status rewritten", 30)


def test_page_status_is_what_neuraldrive_status_prints(host: Any, gateway: Gateway, api_key: str) -> None:
    """One source of truth: the same function, the same documented shape, the same instances and GPUs."""
    page = settled_status(gateway, api_key)
    with host.sudo():
        cli = json.loads(host.check_output("neuraldrive status --json"))
        devices = host.check_output(". /run/neuraldrive/gpu.env && echo $NEURALDRIVE_GPU_DEVICES").split()
    assert page["schema"] == cli["schema"] == 1 and page.keys() == cli.keys()
    assert [g["slot"] for g in page["gpus"]][:len(devices)] == [d.rsplit(":", 2)[0] for d in devices]
    assert [g["slot"] for g in page["gpus"]] == [g["slot"] for g in cli["gpus"]]
    names = instance_names(host)
    assert [i["name"] for i in page["instances"]] == [i["name"] for i in cli["instances"]] == names
    for inst in page["instances"]:
        # "active" proves systemctl answers from inside the writer's sandbox (AF_UNIX, D-Bus).
        assert (inst["unit_state"], inst["engine"]["state"], inst["url"].startswith("http://127.0.0.1:")) == (
            "active", "running", True), inst


def unload(gateway: Gateway, api_key: str, model: str) -> None:
    """The benchmark keeps its model loaded (keep_alive -1); later tests expect the engine as they found it."""
    gateway.request("POST", "/api/generate", key=api_key, body={"model": model, "keep_alive": 0, "stream": False})


def test_bench_cli_reports_the_engines_counters(host: Any, gateway: Gateway, api_key: str, model: str) -> None:
    try:
        with host.sudo():
            report = json.loads(host.check_output(f"neuraldrive bench {model} --runs 3 --json"))
    finally:
        unload(gateway, api_key, model)
    assert report["model"] == model and report["runs"] == len(report["samples"]) == 3
    assert report["gpu_backend"] in ("cpu", "cuda", "vulkan", "rocm")
    for key, unit, scale in (("ttft_s", "ms", 1000), ("prompt_tps", "tokens/s", 1), ("gen_tps", "tokens/s", 1)):
        spread = report[key]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"], (key, spread)
        record_figure(f"neuraldrive bench {key.removesuffix('_s')} min/median/max",
                      "/".join(f"{spread[k] * scale:.1f}" for k in ("min", "median", "max")) + f" {unit}")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (scripts/setup-host)")
def test_page_through_the_gateway(host: Any, gateway: Gateway, api_key: str, model: str) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")  # only this test needs it
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    status = settled_status(gateway, api_key)
    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for arg in ("--headless=new", "--no-sandbox", "--ignore-certificate-errors", "--window-size=1100,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(shutil.which("chromedriver"))))
    SHOTS.mkdir(parents=True, exist_ok=True)
    by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731
    try:
        driver.get(gateway.base + "/")
        load_ms = driver.execute_script("return performance.getEntriesByType('navigation')[0].duration")
        record_figure("page load through the gateway (navigation, TLS included)", f"{load_ms:.0f} ms")
        by_id("key").send_keys("nd-wrong-key")
        by_id("key-form").submit()
        _wait(lambda: "refused (HTTP 401)" in by_id("message").text, "wrong-key message")
        driver.save_screenshot(str(SHOTS / "1-wrong-key.png"))
        start = time.monotonic()
        by_id("key").send_keys(api_key)
        by_id("key-form").submit()
        _wait(lambda: by_id("main").is_displayed() and "running" in by_id("status").text
              and model in by_id("models").text, "status and models")
        record_figure("page ready after the key (status + models through the gateway)",
                      f"{time.monotonic() - start:.2f} s")
        size = int(driver.execute_script(PAGE_BYTES_JS))
        record_figure("page total size (HTML, CSS, JS)", f"{size} bytes")
        assert 0 < size <= PAGE_BUDGET
        rows = driver.find_elements(By.CSS_SELECTOR, "#gpus tr")
        assert [r.get_attribute("data-slot") for r in rows] == [g["slot"] for g in status["gpus"]]
        shown = driver.find_elements(By.CSS_SELECTOR, "#instances tr")
        assert [(r.get_attribute("data-name"), r.get_attribute("data-health")) for r in shown] == [
            (name, "ok") for name in instance_names(host)]
        assert all(f"/i/{r.get_attribute('data-name')}/" in r.text for r in shown)
        driver.save_screenshot(str(SHOTS / "2-status.png"))
        Select(by_id("chat-model")).select_by_value(model)
        by_id("chat-text").send_keys("hello")
        by_id("chat-form").submit()
        _wait(lambda: by_id("chat-reply").get_attribute("data-done") == "true", "chat reply", 300)
        assert int(by_id("chat-reply").get_attribute("data-chunks") or 0) >= 1
        Select(by_id("bench-model")).select_by_value(model)
        by_id("bench-form").submit()
        _wait(lambda: by_id("bench-table").is_displayed(), "benchmark figures", 600)
        figures = {line.rsplit(" ", 3)[0]: line.rsplit(" ", 3)[1:] for line in by_id("bench-rows").text.splitlines()}
        assert figures.keys() == {"first token (ms)", "prompt (tokens/s)", "generation (tokens/s)"}
        for name, values in figures.items():
            assert all(float(v) > 0 for v in values), (name, values)
            record_figure(f"page benchmark {name} min/median/max", "/".join(values))
        driver.save_screenshot(str(SHOTS / "3-chat-bench.png"))
    finally:
        record_figure("page screenshots", str(SHOTS))
        driver.quit()
        unload(gateway, api_key, model)
