"""A crawl's id: the web app's and the export's ``new_since`` compare ids, so they must sort by
start time even for crawls started within the same second (in-process crawls often are)."""

from __future__ import annotations

from tmapi_crawler.crawl import new_crawl_id
from tmapi_crawler.storage.queries import CRAWL_ID


def test_ids_made_in_a_row_sort_in_the_order_they_were_made() -> None:
    ids = [new_crawl_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # Many share a second: the order is not the seconds' alone.
    assert len({crawl_id[:16] for crawl_id in ids}) < len(ids)


def test_ids_are_what_the_queries_accept() -> None:
    assert all(CRAWL_ID.fullmatch(new_crawl_id()) for _ in range(100))
