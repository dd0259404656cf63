"""A real headless Chromium driven by Selenium, for tests of web pages.

``with chromium_driver(tmp_path) as driver: driver.get(url)``; skips the test with a
stated reason when Chromium, chromedriver or Selenium is missing or cannot start.
``browser_errors(driver)`` lists the page's console errors so far.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium",
                       "chromium-browser", "google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1280,900")


def _which(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def chromium_driver(tmp_path: Path, timeout_s: float = 20.0) -> Iterator[Any]:
    """A Selenium Chrome driver on a fresh profile under ``tmp_path``; quits on exit."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    browser = _which(CHROMIUM_CANDIDATES)
    driver_path = _which(DRIVER_CANDIDATES)
    if browser is None or driver_path is None:
        pytest.skip("Chromium and chromedriver are needed for browser tests "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # driver.get_log("browser")
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as exc:
        pytest.skip(f"Chromium could not start here: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(timeout_s)
    try:
        yield driver
    finally:
        driver.quit()


def browser_errors(driver: Any) -> list[str]:
    """Console messages of level SEVERE (JavaScript errors, failed requests) since last call."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"]
