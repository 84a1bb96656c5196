"""``scripts/screenshots``: a picture of each page of ``scrapy serve`` for the README.

The same catalogue as the web app's tests (the sandbox crawled twice, prices moved between, a
category shrunk), in a throw-away mongod, photographed by the same headless chromium.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pymongo
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import chromium, missing_browser, served
from tests.crawling import PROJECT_ROOT
from tests.servers import MongodProcess
from tests.web_data import crawl_twice

OUT = PROJECT_ROOT / "docs" / "screenshots"


def main() -> None:
    if (why := missing_browser()) is not None:
        sys.exit(f"error: {why}")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir, \
            MongodProcess(Path(workdir) / "mongod") as mongod:
        crawled = crawl_twice(Path(workdir), mongod, "screenshots")
        with pymongo.MongoClient(mongod.uri) as client:
            moved = client["screenshots"]["history"].find_one(
                {"crawl_id": crawled.second, "changes.price": {"$ne": None}})
        pages = {
            "catalogue": "/?category=301",
            "product": f"/products/{moved['item_id']}",
            "movers": "/movers?category=301",
            "crawls": "/crawls",
        }
        with served(mongod.uri, "screenshots") as server, chromium(size="1280,1000") as browser:
            for name, path in pages.items():
                # Tall enough for the product's chart and the movers' first lists.
                browser.set_window_size(1280, 1700 if name in ("product", "movers") else 1000)
                browser.get(server.url + path)
                if name in ("product", "crawls"):
                    WebDriverWait(browser, 30).until(
                        lambda b: b.find_elements(By.CSS_SELECTOR, "#chart canvas"))
                browser.save_screenshot(str(OUT / f"{name}.png"))
                print(OUT.relative_to(PROJECT_ROOT) / f"{name}.png")


if __name__ == "__main__":
    main()
