"""A page's request context: the one typed record an API request carries in its meta.

Everything the crawler needs to know about a page when its answer (or its failure) comes back
travels in ``Request.meta[META_KEY]`` as ``PageContext.to_dict()``: plain JSON data, so the
request can wait in any queue — Scrapy's memory queue, a JOBDIR, or Redis for a cluster — and be
rebuilt from that data alone (``frontier.paging.page_url`` makes its URL).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Self

from tmapi_crawler.plan import Query

#: ``Request.meta`` key marking API requests; its value is ``PageContext.to_dict()``.
META_KEY: Final = "tmapi"
#: ``Request.meta`` key of the pages asked for by a page decided again (``Decision.replayed``):
#: kept in this process only; such a page dropped as a duplicate was asked for already.
REPLAYED_META: Final = "tmapi_replayed"
#: ``Request.meta`` key: the paid calls this page took, retries included (set by the transport).
CALLS_META: Final = "tmapi_calls"
#: ``Request.meta`` key: an answer handed back from the spool, the paid calls it had taken.
SPOOLED_CALLS_META: Final = "tmapi_spooled_calls"
#: ``Request.meta`` key carrying the lease id of a request popped from the shared queue.
#: Copies made for retries keep it, so any of them can acknowledge the page.
LEASE_META: Final = "tmapi_lease"


@dataclass(frozen=True, slots=True)
class CellRef:
    """A query no filter can cut further, read under every sort (``frontier.splitting``):
    its key, and the ``total_count`` it reported."""

    key: str
    total: int


@dataclass(frozen=True, slots=True)
class PageContext:
    """One page of one query, and what its query learned before the page was asked for.

    ``last`` is the last page the query was known to have then; ``size`` the page size the API
    serves when it serves fewer than ``query.page_size`` (the query's pages are numbered in it);
    ``ahead`` the page asked for ahead of the window (a price walk's last reachable page, which
    says where the next walk starts). ``by_price`` is false once the API was seen to ignore the
    price filter; ``cell`` marks the sort queries of a query no filter can cut; ``depth`` counts
    the splits between the planned query and this one (it orders the scheduler's queue).
    """

    query: Query
    page: int = 1
    last: int = 1
    size: int | None = None
    ahead: int | None = None
    by_price: bool = True
    cell: CellRef | None = None
    depth: int = 0

    @property
    def page_size(self) -> int:
        """The page size this page is numbered in: the one served."""
        return self.size or self.query.page_size

    @property
    def sent_query(self) -> Query:
        """The query as requested: at the served page size, once it is known."""
        return replace(self.query, page_size=self.size) if self.size else self.query

    @property
    def key(self) -> str:
        """The page as sent: its query at the served page size, and its number. It names the
        page in the resume ledger and in the frontier's memory of how the page was decided."""
        return f"{self.sent_query.key()}#{self.page}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, defaults left out."""
        data: dict[str, Any] = {"query": self.query.to_dict(), "page": self.page,
                                "last": self.last}
        if self.size is not None:
            data["size"] = self.size
        if self.ahead is not None:
            data["ahead"] = self.ahead
        if not self.by_price:
            data["by_price"] = False
        if self.cell is not None:
            data["cell"] = {"key": self.cell.key, "total": self.cell.total}
        if self.depth:
            data["depth"] = self.depth
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        cell = data.get("cell")
        size, ahead = data.get("size"), data.get("ahead")
        return cls(
            query=Query.from_dict(data["query"]),
            page=int(data["page"]),
            last=int(data.get("last", data["page"])),
            size=None if size is None else int(size),
            ahead=None if ahead is None else int(ahead),
            by_price=bool(data.get("by_price", True)),
            cell=CellRef(str(cell["key"]), int(cell["total"])) if cell else None,
            depth=int(data.get("depth", 0)),
        )

    def at(self, page: int, last: int) -> Self:
        """Another page of the same query, carrying what this one carries."""
        return replace(self, page=page, last=last)
