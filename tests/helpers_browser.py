"""A real headless Chromium driven by Selenium, for tests of web pages.

``with chromium_driver(tmp_path) as driver: driver.get(url)``; skips the test with a
stated reason when Chromium, chromedriver or Selenium is missing or cannot start
(``benchmarks.browser`` starts it; its ``fake_microphone(wav)`` and ``REFUSED_MICROPHONE``
give a page a microphone). ``browser_errors(driver)`` lists the page's console errors so far.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.browser import BrowserMissing, start_chromium


@contextlib.contextmanager
def chromium_driver(tmp_path: Path, timeout_s: float = 20.0,
                    flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A Selenium Chrome driver on a fresh profile under ``tmp_path`` with the extra command
    line ``flags``; quits on exit."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    try:
        driver = start_chromium(profile, flags, timeout_s=timeout_s)
    except BrowserMissing as exc:
        pytest.skip(str(exc))
    try:
        yield driver
    finally:
        driver.quit()


def browser_errors(driver: Any) -> list[str]:
    """Console messages of level SEVERE (JavaScript errors, failed requests) since last call."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"]
