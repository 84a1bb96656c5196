"""Which pages of a query to fetch, decided from each answer alone.

The decision is stateless so that it works the same in one process and across a cluster:
each request carries the last page its query was known to have when it was made.
"""

from __future__ import annotations

from math import ceil
from urllib.parse import urlencode

from tmapi_crawler import api
from tmapi_crawler.plan import Query


def page_url(base_url: str, query: Query, page: int) -> str:
    """The token-free URL of one page; its fixed parameter order makes it a stable key."""
    return f"{base_url.rstrip('/')}{api.PATH}?{urlencode(query.params(page))}"


def pages_after(
    page: int,
    known_last: int,
    *,
    items: int,
    page_size: int,
    total_count: int | None,
    has_next_page: bool | None,
    max_pages: int | None,
    result_cap: int | None,
) -> range:
    """Pages to request after ``page`` answered with ``items`` products.

    Page 1 fans out to every page ``total_count`` implies, so they are fetched in parallel.
    Later pages only extend the query: when ``total_count`` grew past ``known_last``, or
    when the API says there is more than it told (or it gave no ``total_count``).
    An empty page ends the query. Nothing past ``max_pages`` is asked for, nor past
    ``result_cap`` results: paging cannot reach them, and each call costs money.
    """
    if items == 0 or has_next_page is False:
        return range(0)
    implied = ceil(total_count / page_size) if total_count else 0
    last = max(implied, known_last)
    if has_next_page and page >= last:
        last = page + 1
    if max_pages is not None:
        last = min(last, max_pages)
    if result_cap:
        last = min(last, ceil(result_cap / page_size))
    first = page + 1 if page == 1 else max(page, known_last) + 1
    return range(first, last + 1)
