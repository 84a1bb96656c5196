"""Debian's chromium through Selenium, and ``scrapy serve`` as a user starts it.

Nothing downloads a browser: the driver is ``/usr/bin/chromedriver`` and the browser
``/usr/bin/chromium`` (``scripts/test`` installs both). Used by the browser tests and by
``scripts/screenshots``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.crawling import PROJECT_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing_browser() -> str | None:
    """Why the browser cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return (f"{path} is missing: install Debian's chromium and chromium-driver "
                    "(scripts/test does)")
    return None


@contextmanager
def chromium(downloads: Path | None = None, size: str = "1280,900") -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={size}", "--lang=en-US"):
        options.add_argument(argument)
    if downloads is not None:
        options.add_experimental_option("prefs", {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
        })
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass(frozen=True)
class Served:
    url: str
    pid: int


@contextmanager
def served(uri: str, database: str) -> Iterator[Served]:
    """``scripts/scrapy serve --port 0`` over the database, with the URL it printed (it prints
    it once it listens) and its process id."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scrapy", "serve", "--port", "0",
         "-s", f"MONGO_URI={uri}", "-s", f"MONGO_DATABASE={database}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://\S+/", line)
        if found is None:
            process.kill()
            raise RuntimeError(f"scrapy serve did not start: {line}{process.communicate()[1]}")
        yield Served(found.group(0).rstrip("/"), process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
