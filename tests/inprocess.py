"""Components in-process: a crawler built the way ``scrapy crawl`` builds one, from the
project's settings, with its engine set up but not started — so that a test drives one
component directly (as scrapy-zyte-api tests its middleware) and a failure names it.

No Twisted reactor is installed in the test process: Scrapy runs on asyncio alone
(``TWISTED_REACTOR_ENABLED=False``, set by ``scrapy.utils.test.get_crawler``) and downloads
with its aiohttp handler; the end-to-end crawls in ``tests/crawling.py`` use the Twisted one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.settings import BaseSettings
from scrapy.utils.test import get_crawler

from tests.crawling import TOKEN, CrawlResult
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.cli import INCOMPLETE
from tmapi_crawler.closing import FINISHED
from tmapi_crawler.spiders.category_items import CategoryItemsSpider


def project_settings(module: str = "tmapi_crawler.settings", **overrides: Any) -> dict[str, Any]:
    """The project's settings (or a profile's) as ``scrapy crawl`` would read them, plus
    ``overrides``: no progress line, no embedded MongoDB, the tests' token."""
    settings = BaseSettings()  # the module's own values, without Scrapy's defaults
    settings.setmodule(module)
    values = {name: settings[name] for name in settings if name.isupper()}
    values.update(TMAPI_TOKEN=TOKEN, TMAPI_PROGRESS_INTERVAL=0, MEMUSAGE_ENABLED=False,
                  LOG_LEVEL="DEBUG", **overrides)
    return values


def crawler_for(settings: dict[str, Any], **arguments: str) -> Crawler:
    """A crawler with its spider (given ``arguments``, as ``-a``) and engine, ready for
    components to be driven one by one.

    Must be called inside a running event loop (``asyncio.run``).
    """
    crawler = get_crawler(CategoryItemsSpider, settings)
    crawler.crawling = True
    crawler.spider = crawler._create_spider(**arguments)
    crawler.engine = crawler._create_engine()
    return crawler


async def spider_opened(crawler: Crawler) -> None:
    """What the engine tells every component once the spider is open."""
    await crawler.signals.send_catch_log_async(signals.spider_opened, spider=crawler.spider)


async def spider_closed(crawler: Crawler, reason: str = "finished") -> None:
    await crawler.signals.send_catch_log_async(signals.spider_closed, spider=crawler.spider,
                                               reason=reason)


async def engine_stopped(crawler: Crawler) -> None:
    """Close the download handlers and connection pools the crawler opened."""
    await crawler.signals.send_catch_log_async(signals.engine_stopped)


def crawl_in_process(tmp_path: Path, *arguments: str, base_url: str, feed: bool = False,
                     mongo_uri: str = "", database: str = "",
                     settings: dict[str, Any] | None = None) -> CrawlResult:
    """A whole crawl, as ``crawling.crawl`` runs one (``arguments`` are ``name=value`` pairs),
    but in this process: the same components and settings, without the process start and the
    command. Stored into ``mongo_uri``'s ``database`` if given; else MongoDB is left out.

    What only the command does — checking the arguments before start, its last line — is left
    to the end-to-end crawls (``tests/README.md``); ``returncode`` is the exit status the
    README gives for the crawl's end (0 finished, 3 finished incomplete, 1 any other reason),
    which those crawls check against the real command. ``log`` holds every record at DEBUG in
    Scrapy's format; ``feed=True`` writes one record per sighting, as ``crawl(feed=True)``.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    items_path = tmp_path / "items.jsonl"
    values = project_settings(
        TMAPI_BASE_URL=base_url, TMAPI_RETRY_BASE_DELAY=0.01, TMAPI_RETRY_MAX_DELAY=0.05,
        MONGO_FLUSH_INTERVAL=0.2, MONGO_SPILL_DIR=str(tmp_path / "unsaved"),
        MONGO_EMBEDDED_DIR=str(tmp_path / "embedded-mongodb"))
    if mongo_uri:
        values.update(MONGO_URI=mongo_uri, MONGO_DATABASE=database)
    else:
        values["ITEM_PIPELINES"] = {}
    values.update(settings or {})
    if feed:
        values["TMAPI_FEED_RECORDS"] = (settings or {}).get("TMAPI_FEED_RECORDS", "sightings")
        values["FEEDS"] = {str(items_path): {"format": "jsonlines", "overwrite": True}}
    crawler = get_crawler(CategoryItemsSpider, values)
    lines: list[str] = []
    handler = _Collect(lines)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)  # before the spider opens: the transport filters every handler
    root.setLevel(logging.DEBUG)
    try:
        asyncio.run(crawler.crawl_async(**dict(a.split("=", 1) for a in arguments)))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    stats = dict(crawler.stats.get_stats())
    result = CrawlResult(exit_status(stats), "\n".join(lines), stats)
    if feed and items_path.exists():
        result.items = [json.loads(line) for line in items_path.read_text().splitlines()]
    return result


def exit_status(stats: dict[str, Any]) -> int:
    """The exit status ``scrapy crawl`` gives a crawl that ended with these stats."""
    if stats.get("finish_reason") != FINISHED:
        return 1
    return INCOMPLETE if stats.get(stats_keys.COMPLETENESS_COMPLETE) is False else 0


class _Collect(logging.Handler):
    """Every record of the crawl, formatted as Scrapy logs it."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> None:
    """Wait for ``condition`` to hold, looking every 10 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)
