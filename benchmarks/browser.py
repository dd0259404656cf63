"""A real headless Chromium driven by Selenium, for the web page's tests and benchmark.

``start_chromium(profile, flags)`` returns a Selenium driver or raises ``BrowserMissing``
with the reason (tests skip on it; ``python -m benchmarks web`` prints it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from runtime.errors import S2IError

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium",
                       "chromium-browser", "google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1280,900")
NO_GPU = ("--disable-gpu",)
WEBGPU = ("--enable-unsafe-webgpu", "--enable-features=Vulkan")
# page memory figures: precise performance.memory, and gc() in the page and its workers
MEMORY_FLAGS = ("--enable-precise-memory-info", "--js-flags=--expose-gc")
# a microphone whose permission is refused
REFUSED_MICROPHONE = ("--use-fake-device-for-media-stream", "--deny-permission-prompts")


def fake_microphone(wav: str | Path) -> tuple[str, ...]:
    """Flags giving the page a microphone that plays ``wav`` (looped), granted without a
    prompt, with audio allowed to start without a gesture."""
    return ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required")


class BrowserMissing(S2IError):
    """Chromium, chromedriver or Selenium is missing or cannot start here."""


def _which(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def start_chromium(profile: Path, flags: tuple[str, ...] = (), gpu: bool = False,
                   timeout_s: float = 20.0) -> Any:
    """A Selenium Chrome driver on the profile folder ``profile`` with the extra command
    line ``flags`` (``gpu``: without ``--disable-gpu``, for WebGPU); the caller quits it."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserMissing("selenium is not installed (pip install selenium)") from exc
    browser = _which(CHROMIUM_CANDIDATES)
    driver_path = _which(DRIVER_CANDIDATES)
    if browser is None or driver_path is None:
        raise BrowserMissing("Chromium and chromedriver are needed for browser tests "
                             "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, *(() if gpu else NO_GPU), *flags):
        options.add_argument(flag)
    profile.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # driver.get_log("browser")
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as exc:
        raise BrowserMissing(f"Chromium could not start here: "
                             f"{str(exc).splitlines()[0]}") from exc
    driver.set_page_load_timeout(timeout_s)
    return driver
