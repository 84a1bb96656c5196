"""The HTTP client the API's calls go through: Scrapy's aiohttp download handler.

Scrapy's default handler goes through Twisted's HTTP client, which leaves the account's
permits idle longer between an answer and the next call (B1 in BENCHMARKS.md, measured side
by side). Scrapy 2.19 ships this one marked experimental; this project pins Scrapy, runs
every test through it, and relies only on what ``DOWNLOAD_HANDLERS`` promises
(``download_request``, Scrapy's own download exceptions, ``DOWNLOAD_MAXSIZE``, proxies from
``HttpProxyMiddleware``). Twisted's client is one setting away (docs/reference/settings.md).
"""

from __future__ import annotations

from typing import ClassVar

from scrapy.core.downloader.handlers._aiohttp import AiohttpDownloadHandler


class ApiDownloadHandler(AiohttpDownloadHandler):
    """Scrapy's aiohttp handler, without the start-up warning that every user would read as a
    fault of theirs: the choice is this project's, documented and tested here."""

    experimental: ClassVar[bool] = False
