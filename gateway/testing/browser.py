"""Debian's chromium, headless, through Debian's chromedriver: the real browser that
tests/test_web.py, tests/test_web_hotspots.py and bench/station_to_screen.py drive.

Only tests and benchmarks import this (selenium is a test dependency, never the daemon's).
"""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900")


def chromium() -> webdriver.Chrome:
    """A new headless chromium; the caller quits it."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ARGUMENTS:
        options.add_argument(arg)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)
