"""A crawl's identity: its id, made once per crawl and found by everyone who records it.

It sits at the bottom of the house because everything that records a crawl needs it: the
writer and the run recorder (``storage``), the ledger, the cluster (a distributed scheduler
shares its crawl's id), the page accounting's ledger entries. A resumed crawl keeps the id of
the crawl it continues (``resume_crawl``).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from tmapi_crawler import stats as stats_keys

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

_CRAWL_IDS: WeakKeyDictionary[Crawler, str] = WeakKeyDictionary()
_last = datetime.min.replace(tzinfo=UTC)


def new_crawl_id() -> str:
    """Sortable by start time to the microsecond (``new_since`` compares ids: two crawls
    started within one second must not sort by chance), unique across workers started at once:
    the second, the microsecond in five hex digits, then six random ones. Within one process
    each id is later than the one before, even when the clock has not moved."""
    global _last  # noqa: PLW0603 - the process's last id time: one value, nothing to share
    now = _last = max(datetime.now(UTC), _last + timedelta(microseconds=1))
    return f"{now:%Y%m%dT%H%M%SZ}-{now.microsecond:05x}{secrets.token_hex(3)}"


def crawl_id(crawler: Crawler) -> str:
    """The crawl's id: a distributed scheduler's cluster crawl, or one made for this run.

    Asked for first by whoever needs it first (the recorder when the spider opens, the writer
    when it flushes), once the scheduler is open.
    """
    known = _CRAWL_IDS.get(crawler)
    if known is None:
        scheduler = crawler.engine.scheduler if crawler.engine is not None else None
        known = _CRAWL_IDS[crawler] = getattr(scheduler, "crawl_id", None) or new_crawl_id()
        crawler.stats.set_value(stats_keys.CRAWL_ID, known)
    return known


def resume_crawl(crawler: Crawler, crawl_id_: str) -> None:
    """This run continues the interrupted crawl ``crawl_id_`` (``storage.ledger``): its id is
    the crawl's."""
    _CRAWL_IDS[crawler] = crawl_id_
    crawler.stats.set_value(stats_keys.CRAWL_ID, crawl_id_)
