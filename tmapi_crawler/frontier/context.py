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


@dataclass(frozen=True, slots=True)
class CellRef:
    """A query no filter can cut further, read under every sort (``frontier.splitting``)."""

    key: str
    total: int


@dataclass(frozen=True, slots=True)
class PageContext:
    """One page of one query, and what its query learned before it was asked for.

    ``last`` is the last page the query was known to have when this page was requested.
    ``parent_total`` (a price slice's parent's total: a slice as big did not narrow),
    ``by_price`` (false once the API was seen to ignore the price filter) and ``cell`` are
    what a slice of a capped query carries; its later pages keep them. ``refetch`` asks again
    for a page fetched before a cap was found, now that it must decide a split.
    """

    query: Query
    page: int = 1
    last: int = 1
    parent_total: int | None = None
    by_price: bool = True
    cell: CellRef | None = None
    refetch: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data, defaults left out."""
        data: dict[str, Any] = {"query": self.query.to_dict(), "page": self.page,
                                "last": self.last}
        if self.parent_total is not None:
            data["parent_total"] = self.parent_total
        if not self.by_price:
            data["by_price"] = False
        if self.cell is not None:
            data["cell"] = {"key": self.cell.key, "total": self.cell.total}
        if self.refetch:
            data["refetch"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        cell = data.get("cell")
        return cls(
            query=Query.from_dict(data["query"]),
            page=int(data["page"]),
            last=int(data.get("last", data["page"])),
            parent_total=data.get("parent_total"),
            by_price=bool(data.get("by_price", True)),
            cell=CellRef(str(cell["key"]), int(cell["total"])) if cell else None,
            refetch=bool(data.get("refetch", False)),
        )

    def at(self, page: int, last: int) -> Self:
        """The same query's ``page``, carrying what this one carries (but a refetch)."""
        return replace(self, page=page, last=last, refetch=False)
