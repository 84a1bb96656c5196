"""Where a query's pages end, as one answer tells it, and the URL of a page.

Pure functions: the frontier combines them with what it remembers of the query. Nothing here
loops over pages, so a ``total_count`` of 10^12 costs what 10 does.
"""

from __future__ import annotations

from urllib.parse import urlencode

from tmapi_crawler import api
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query


def page_url(base_url: str, query: Query, page: int) -> str:
    """The token-free URL of one page; its fixed parameter order makes it a stable key."""
    return f"{base_url.rstrip('/')}{api.PATH}?{urlencode(query.params(page))}"


def pages_for(results: int, page_size: int) -> int:
    """Pages that ``results`` fill."""
    return -(-results // page_size)


def ends_at(page: int, summary: PageSummary) -> int | None:
    """The last page, when this answer shows it: an empty page ends before itself, a page
    that says there is no next page ends at itself. A short page ends nothing: real listings
    have pages of 18 or 19 of 20 in their middle."""
    if summary.items == 0:
        return page - 1
    if summary.has_next_page is False:
        return page
    return None


def last_page(page: int, known_last: int, summary: PageSummary, page_size: int, *,
              new: int | None = None) -> int:
    """The last page of a query, as known before (``known_last``) and from this answer.

    ``total_count`` implies a last page; a page at or past it that says there is more, or
    (without a total or a ``has_next_page``) is full, adds one. When such a page brought
    ``new`` products its query had not shown (fewer than a page: the rest repeat, promoted
    items in fixed slots), the listing goes on at that pace: its last page is where ``new``
    products a page make up the total. The caller bounds the result by what paging can
    reach: a total may be anything.
    """
    total = summary.total_count
    last = max(known_last, pages_for(total, page_size) if total else 0)
    more = summary.has_next_page
    if more is None and total is None:
        more = summary.items >= page_size
    if more and page >= last:
        last = page + 1
        if total and new and new < page_size:
            last = max(last, pages_for(total, new))
    return last


def short(summary: PageSummary, page_size: int) -> bool:
    """A page with fewer items than asked for that still says more follow."""
    return 0 < summary.items < page_size and summary.has_next_page is not False
