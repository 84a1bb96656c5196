"""Wires the API transport into Scrapy, the way add-ons of paid APIs do.

Some settings follow from others (room for requests waiting on a permit, the timeout the
API asks for), so they are derived here, after every profile and ``-s`` override applied.
"""

from __future__ import annotations

from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.settings import BaseSettings

from tmapi_crawler import api
from tmapi_crawler.closing import StopGuard
from tmapi_crawler.transport.middleware import TmapiTransportMiddleware

#: Closest to the downloader: every other middleware's process_request ran before it.
TRANSPORT_ORDER = 1000


class TmapiAddon:
    def update_settings(self, settings: BaseSettings) -> None:
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", TmapiTransportMiddleware, TRANSPORT_ORDER
        )
        # Says when the crawl starts stopping (no paid call may start after), and saves what
        # was parsed on a forced stop.
        settings.set_in_component_priority_dict("EXTENSIONS", StopGuard, 0)
        # The transport retries in place, with backoff; a second, re-queueing retry layer
        # would multiply paid calls.
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", RetryMiddleware, None)
        # Requests waiting for a permit hold a CONCURRENT_REQUESTS slot: leave room for as
        # many as are in flight, so a freed permit is taken at once.
        wanted = 2 * settings.getint("TMAPI_CONCURRENCY")
        _at_least(settings, "CONCURRENT_REQUESTS", wanted)
        _at_least(settings, "CONCURRENT_REQUESTS_PER_DOMAIN", wanted)
        if not settings.getint("TMAPI_QUERY_WINDOW"):  # 0: one query keeps every slot busy
            _at_least(settings, "TMAPI_QUERY_WINDOW", wanted)
        # Answer 499 asks clients to wait 60 s; a shorter timeout turns slow pages into retries.
        _at_least(settings, "DOWNLOAD_TIMEOUT", api.MIN_TIMEOUT_SECONDS)


def _at_least(settings: BaseSettings, name: str, value: float) -> None:
    if settings.getfloat(name) < value:
        settings.set(name, value, priority=settings.getpriority(name) or "addon")
