"""Debian's chromium, headless, through Debian's chromedriver: the real browser that
tests/test_web.py, tests/test_web_hotspots.py and bench/station_to_screen.py drive.

Only tests and benchmarks import this (selenium is a test dependency, never the daemon's).
"""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900")


def chromium() -> webdriver.Chrome:
    """A new headless chromium; the caller quits it."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ARGUMENTS:
        options.add_argument(arg)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def log_in(browser: webdriver.Chrome, port: int, username: str, password: str,
           wait_s: float = 30.0) -> None:
    """Log in to the console on `port`, and wait until its event stream is live."""
    browser.get(f"http://127.0.0.1:{port}/")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, wait_s).until(
        ec.text_to_be_present_in_element((By.ID, "status"), "live"))
