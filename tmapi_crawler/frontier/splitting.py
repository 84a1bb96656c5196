"""Reaching every result of a query that has more than paging can reach.

A listing API typically lets paging reach only the first N results of a query (the reference's
example answer shows ``total_count: 2000``). A query with more is cut into price ranges
(``price_start``/``price_end``, both inclusive) small enough to page through. A single price
with too many results is partitioned by the boolean filters, and a part still too big is read
under every sort, each of which reaches a different subset of it. Whatever stays out of reach
is counted, never hidden.

The decisions are pure functions of one answer, and slices are ordinary ``Query`` objects, so
they are queued like any other query, in one process or across a cluster. The spider only wires
them; the few things that must outlive one answer (a detected cap, the products seen at a price
nobody can page through) live in ``SplitState``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from math import ceil
from typing import Final

from tmapi_crawler import api
from tmapi_crawler.plan import Query

#: Slices aim at this share of the reach: the cuts come from one page of prices, a small
#: sample, and a slice that still comes out over the reach costs a probe and another split.
FILL: Final = 0.8

Bounds = tuple[Decimal | None, Decimal | None]


@dataclass(frozen=True, slots=True)
class Split:
    """How a capped query is replaced: ``price`` and ``flag`` splits partition it; a ``sort``
    split lists it under the other sorts, to be paged up to the reach like itself."""

    how: str
    queries: tuple[Query, ...]


def observed_cap(
    page: int, page_size: int, *, items: int, total_count: int | None, has_next_page: bool | None
) -> int | None:
    """The most results paging reaches, as an answer that stops short of ``total_count`` says.

    A last page (short, or ``has_next_page`` false) tells the cap itself; an empty page only
    that it is no higher than the results before it. Page 1 tells nothing: a cap below one page
    is no cap.
    """
    if total_count is None or page < 2:
        return None
    reached = (page - 1) * page_size + items
    if reached >= total_count:
        return None
    if items == 0 or items < page_size or has_next_page is False:
        return reached
    return None


def capped(total_count: int, reach: int) -> bool:
    """Whether paging cannot reach every result.

    A total equal to the reach counts as capped: an API that caps paging may cap the total it
    reports as well, and checking costs one probe where missing would lose products unseen.
    """
    return total_count >= reach


def bounds(query: Query) -> Bounds:
    start, end = query.price_start, query.price_end
    return (None if start is None else Decimal(start), None if end is None else Decimal(end))


def is_point(query: Query) -> bool:
    """A single price: no price range can cut it further."""
    start, end = bounds(query)
    return start is not None and start == end


def walked(query: Query) -> bool:
    """A price-sorted query reaches its cheapest (dearest) results: they need no probe.

    Its page 1 is no sample of its prices, so it is not cut at page 1; it is paged to the
    reach, and the last reachable page says where the rest starts (``walk``).
    """
    return query.sort in api.PRICE_SORTS and not is_point(query)


def with_prices(query: Query, start: Decimal | None, end: Decimal | None) -> Query:
    return replace(query, price_start=_price_text(start), price_end=_price_text(end))


def _price_text(price: Decimal | None) -> str | None:
    """How ``plan`` spells a price, so a slice's URL and key look like a user's query."""
    return None if price is None else format(price.normalize(), "f")


def price_cuts(
    range_: Bounds, prices: Sequence[Decimal], *, total: int, reach: int
) -> list[Bounds]:
    """Cut a price range into slices of about ``reach * FILL`` results each, or [] if it can't.

    ``prices`` are a sample of the range's results (a page 1 not sorted by price). Cuts sit at
    the sample's quantiles, at prices seen: a cut at m gives [.., m] and [m + step, ..], so no
    product is fetched twice and none falls between (prices are whole fen, ``api.PRICE_STEP``).
    A price so common in the sample that it alone would fill a slice gets a slice of its own at
    once, instead of after a few more probes.
    """
    start, end = range_
    low = start if start is not None else Decimal(0)
    sample = sorted(p for p in prices if p >= low and (end is None or p <= end))
    if not sample:
        return []
    size = len(sample)
    parts = ceil(total / (reach * FILL))
    cuts = {sample[ceil(j * size / parts) - 1] for j in range(1, parts)}
    per_slice = reach * FILL * size / total
    for price, count in Counter(sample).items():
        if count > per_slice:
            cuts |= {price - api.PRICE_STEP, price}
    inside = sorted(c for c in cuts if c >= low and (end is None or c < end))
    if not inside:
        return []
    return list(zip([start, *(c + api.PRICE_STEP for c in inside)], [*inside, end], strict=True))


def walk(query: Query, edge: Decimal | None) -> tuple[Query, ...]:
    """Where a price-sorted query goes on after its last reachable page, whose price is ``edge``.

    The rest starts at ``edge`` itself (results at that price may lie on both sides of the cap).
    When the whole reachable part sits at ``edge``, that price gets a query of its own and the
    rest starts one step past it. Empty: ``edge`` unknown or outside the range, as when the API
    ignores the price filter — nothing can reach the rest.
    """
    start, end = bounds(query)
    if edge is None or (start is not None and edge < start) or (end is not None and edge > end):
        return ()
    point = with_prices(query, edge, edge)
    if api.PRICE_SORTS[query.sort] > 0:
        if start is None or edge > start:
            return (with_prices(query, edge, end),)
        rest = edge + api.PRICE_STEP
        past_end = end is not None and rest > end
        return (point,) if past_end else (point, with_prices(query, rest, end))
    if end is None or edge < end:
        return (with_prices(query, start, edge),)
    rest = edge - api.PRICE_STEP
    too_low = rest < (start if start is not None else Decimal(0))
    return (point,) if too_low else (point, with_prices(query, start, rest))


def plan_split(query: Query, prices: Sequence[Decimal], *, total: int, reach: int,
               by_price: bool = True) -> Split:
    """How a capped query decided at its page 1 reaches everything.

    By price while the range can still be cut (``by_price`` false once the API was seen to
    ignore the price filter); then by the first boolean filter the query leaves open, both
    values — if the API took ``false`` as "either", that half is the parent again and simply
    goes on to the next filter, so nothing is lost either way; then by the other sorts.
    """
    if by_price and not is_point(query):
        slices = price_cuts(bounds(query), prices, total=total, reach=reach)
        if slices:
            return Split("price", tuple(with_prices(query, *s) for s in slices))
    for name in api.FLAG_FILTERS:
        if getattr(query, name) is None:
            return Split("flag", (replace(query, **{name: True}), replace(query, **{name: False})))
    return Split("sort", tuple(replace(query, sort=s) for s in api.SORTS if s != query.sort))


def decision_page(query: Query, reach: int) -> int:
    """The page whose answer decides a capped query: page 1, or a walk's last reachable page."""
    return ceil(reach / query.page_size) if walked(query) else 1


@dataclass(slots=True)
class Cell:
    """A query no filter can cut further, read under every sort: what none reached is lost."""

    total: int
    pending: int  # its sort queries not finished yet
    ids: set[int] = field(default_factory=set)

    @property
    def unreachable(self) -> int:
        return max(0, self.total - len(self.ids))


@dataclass(slots=True)
class SplitState:
    """What one process remembers across answers; everything else travels in request meta.

    The cap is bounded from both sides by what answers show — results up to a position exist,
    nothing past one came — and detected once the bounds meet: an empty page alone may sit far
    past the cap (pages are not answered in order), and splitting with such a bound would only
    need splitting again. ``outstanding`` counts the pages of each query (or slice) not
    answered yet, so the crawl knows when one is done; ``decided`` and ``refetched`` make each
    capped query decided once. All are bounded by the number of queries, not pages or products.
    """

    reached: int = 0  # paging reached this many results of some query
    bound: int | None = None  # and no query got past this many
    detected_cap: int | None = None  # both meet: the cap, as answers showed it
    outstanding: Counter[str] = field(default_factory=Counter)
    decided: set[str] = field(default_factory=set)
    refetched: set[str] = field(default_factory=set)
    cells: dict[str, Cell] = field(default_factory=dict)

    def observe(self, page: int, page_size: int, *, items: int, total_count: int | None,
                has_next_page: bool | None) -> int | None:
        """Learn from one answer what paging reaches; the cap, when that detects a new one."""
        if items:
            self.reached = max(self.reached, (page - 1) * page_size + items)
        cap = observed_cap(page, page_size, items=items, total_count=total_count,
                           has_next_page=has_next_page)
        if cap is not None and cap >= self.reached and (self.bound is None or cap < self.bound):
            self.bound = cap
        if self.bound is not None and self.reached > self.bound:
            # Paging got past it: no cap, but a total_count that said more than there was.
            self.bound = self.detected_cap = None
        if self.bound is None or self.reached < self.bound or self.bound == self.detected_cap:
            return None
        self.detected_cap = self.bound
        return self.bound

    def reach(self, configured: int | None) -> int | None:
        """Results a query can reach by paging: the setting, or less if answers show less."""
        known = [n for n in (configured, self.bound) if n]
        return min(known) if known else None

    def settled(self, configured: int | None) -> bool:
        """Whether the reach is the cap itself, not merely a bound on it."""
        return self.detected_cap is not None or (
            bool(configured) and (self.bound is None or configured <= self.bound))

    def page_created(self, key: str) -> None:
        self.outstanding[key] += 1

    def page_finished(self, key: str) -> bool:
        """Count a page answered, failed or dropped; True when its query has no page left.

        A page this process did not create (a cluster worker's) is ignored.
        """
        if key not in self.outstanding:
            return False
        self.outstanding[key] -= 1
        if self.outstanding[key]:
            return False
        del self.outstanding[key]
        return True
