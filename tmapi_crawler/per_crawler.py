"""One object per crawler, shared by the components of one crawl (the store, the ledger, the
spool, the losses): made the first time one of them asks, gone with the crawler, so two
crawlers in one process (tests, ``scrapy estimate``) never share one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

T = TypeVar("T")


class PerCrawler(Generic[T]):
    """``made(crawler, make)``: this crawler's object, ``make()`` the first time."""

    def __init__(self) -> None:
        self._made: WeakKeyDictionary[Crawler, T] = WeakKeyDictionary()

    def made(self, crawler: Crawler, make: Callable[[], T]) -> T:
        found = self._made.get(crawler)
        if found is None:
            found = self._made[crawler] = make()
        return found
