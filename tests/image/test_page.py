"""The operator page on the booted image, through QEMU's forwarded gateway port, in headless Chromium:
the same checks as tests/unit/test_page.py (key, wrong key, pull progress, streamed chat, benchmark)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
SHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots" / "image"


def _wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"page: no {what}"
        time.sleep(0.2)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (scripts/setup-host)")
def test_page_through_the_gateway(gateway: Any, api_key: str) -> None:
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for arg in ("--headless=new", "--no-sandbox", "--ignore-certificate-errors", "--window-size=1100,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(shutil.which("chromedriver"))))
    SHOTS.mkdir(parents=True, exist_ok=True)
    by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731
    try:
        driver.get(gateway.base + "/")
        by_id("key").send_keys("nd-wrong-key")
        by_id("key-form").submit()
        _wait(lambda: "refused (HTTP 401)" in by_id("message").text, "wrong-key message")
        start = time.monotonic()
        by_id("key").send_keys(api_key)
        by_id("key-form").submit()
        _wait(lambda: by_id("main").is_displayed() and "running" in by_id("status").text, "status")
        print(f"\npage load through QEMU's gateway port: {time.monotonic() - start:.2f} s")
        driver.save_screenshot(str(SHOTS / "status.png"))
        if by_id("chat-model").get_attribute("value"):
            by_id("chat-text").send_keys("hello")
            by_id("chat-form").submit()
            _wait(lambda: by_id("chat-reply").get_attribute("data-done") == "true", "chat reply", 300)
            by_id("bench-form").submit()
            _wait(lambda: by_id("bench-table").is_displayed(), "benchmark figures", 600)
            assert "tokens/s" in by_id("bench-rows").text
        driver.save_screenshot(str(SHOTS / "chat-bench.png"))
    finally:
        print(f"screenshots: {SHOTS}")
        driver.quit()
