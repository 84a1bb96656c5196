"""Log lines about items that say how many products a page carried, not every product."""

from __future__ import annotations

import logging
from typing import Any

from scrapy import Spider, logformatter
from scrapy.http import Response
from twisted.python.failure import Failure

from tmapi_crawler.items import ProductPage


class LogFormatter(logformatter.LogFormatter):
    def scraped(self, item: Any, response: Response | Failure | None, spider: Spider
                ) -> logformatter.LogFormatterResult:
        """One DEBUG line per page; Scrapy's default would print the whole page of products."""
        if not isinstance(item, ProductPage) or not isinstance(response, Response):
            return super().scraped(item, response, spider)
        return {
            "level": logging.DEBUG,
            "msg": "Scraped %(count)d products from <%(status)d %(url)s>",
            "args": {"count": len(item.products), "status": response.status, "url": response.url},
        }
