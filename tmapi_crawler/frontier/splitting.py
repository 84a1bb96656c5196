"""Reaching every result of a query that has more than paging can reach.

Paging reaches only the first N results of a query (the reach, ``TMAPI_RESULT_CAP``), and the
real API caps ``total_count`` at that reach as well: a total that reaches it means "at least
the reach", never how many more. So nothing here is sized from a total. A query over the reach
is read as a price-sorted *walk*: sorted by price, every reachable page is useful, and its last
reachable page says at which price the rest starts — the next walk, over the prices from there
(both bounds are inclusive and whole fen, ``api.PRICE_STEP``, rounded the safe way: a price
with three decimals, 9.995, is read twice rather than lost). A single price with more
results than the reach is partitioned by the boolean filters, and a part still too big is read
under every sort, each reaching a different subset of it; whatever none of them reaches is
counted, never hidden.

These are pure functions of one query and one answer; slices are ordinary ``Query`` objects.
The frontier applies them, once per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from itertools import pairwise
from typing import Final

from tmapi_crawler import api
from tmapi_crawler.plan import Query

Bounds = tuple[Decimal | None, Decimal | None]
#: The sort a capped query is walked in.
WALK_SORT: Final = "price_up"


@dataclass(frozen=True, slots=True)
class Split:
    """How a capped query is read instead: a ``walk`` of its prices, a ``flag`` partition, or
    a ``sort`` cell (the same results under the other sorts, each paged up to the reach)."""

    how: str
    queries: tuple[Query, ...]


def bounds(query: Query) -> Bounds:
    start, end = query.price_start, query.price_end
    return (None if start is None else Decimal(start), None if end is None else Decimal(end))


def is_point(query: Query) -> bool:
    """A single price, or two fen next to each other: no price range in whole fen can cut it
    further without losing the prices between the two (9.995)."""
    start, end = bounds(query)
    return start is not None and end is not None and end - start <= api.PRICE_STEP


def walked(query: Query) -> bool:
    """Sorted by price over a price range: a walk, whose last reachable page leads on."""
    return query.sort in api.PRICE_SORTS and not is_point(query)


def with_prices(query: Query, start: Decimal | None, end: Decimal | None) -> Query:
    return replace(query, price_start=_price_text(start), price_end=_price_text(end))


def _price_text(price: Decimal | None) -> str | None:
    """How ``plan`` spells a price, so a slice's URL and key look like a user's query."""
    return None if price is None else format(price.normalize(), "f")


def outside(query: Query, prices: Sequence[Decimal | None]) -> tuple[int, int]:
    """Of a page's known prices, how many lie outside the query's price range, and how many
    there are: an API that ignores the price filter shows it here, whatever totals say."""
    start, end = bounds(query)
    known = [p for p in prices if p is not None]
    out = sum(1 for p in known
              if (start is not None and p < start) or (end is not None and p > end))
    return out, len(known)


def ignores_prices(query: Query, prices: Sequence[Decimal | None]) -> bool:
    """Most of a page priced outside its range, its last item too. A few strays (a promoted
    item, a price the listing rounds differently) are not enough, nor are promoted items in
    the first places of every page, however many: ads ignore filters, the listing after
    them does not."""
    out, known = outside(query, prices)
    last = [p for p in prices if p is not None][-1:]
    return 2 * out > known and outside(query, last)[0] == 1


def edge(query: Query, prices: Sequence[Decimal | None]) -> tuple[Decimal | None, bool]:
    """Where a price-sorted page ends: the price the rest of its walk starts at; and whether
    the page was in order.

    In order, that is its last price; so too when only its first places are out of order
    and the rest, at least a third of the page, is in order (promoted items in fixed slots
    ahead of the listing). Otherwise (a listing sorted by a price other than the one shown),
    the page's lowest price for ``price_up`` and highest for ``price_down``: a walk that
    starts too early fetches a few results twice, one that starts too late loses them.
    """
    start, end = bounds(query)
    inside = [p for p in prices if p is not None and (start is None or p >= start)
              and (end is None or p <= end)]
    if not inside:
        return None, True
    rising = api.PRICE_SORTS[query.sort] > 0
    in_order = [(a <= b) if rising else (a >= b) for a, b in pairwise(inside)]
    if all(in_order):
        return inside[-1], True
    tail = 1 + next(i for i, ok in enumerate(reversed(in_order)) if not ok)
    if tail >= max(2, len(prices) // 3):
        return inside[-1], True
    return (min(inside) if rising else max(inside)), False


def walk(query: Query, at: Decimal | None, *, crowded: bool = False) -> tuple[Query, ...]:
    """Where a price-sorted query goes on after its last reachable page, which ends at ``at``.

    The rest starts at ``at`` itself (results at that price may lie on both sides of the
    reach), rounded to whole fen the safe way — down for ``price_up``, up for ``price_down``
    — so a price between two fen (9.995) is read again rather than lost, and no price with
    three decimals is ever sent. When the whole reachable part sits at ``at``, or the whole
    last page does (``crowded``: that price alone may hold more than the reach), that price
    gets a query of its own: the fen it is rounded to and the next one, a range no whole-fen
    price cuts without losing the prices between them (``is_point``); the rest starts at
    that next fen, read twice. Empty: ``at`` unknown or outside the range — nothing can
    reach the rest.
    """
    start, end = bounds(query)
    if at is None or (start is not None and at < start) or (end is not None and at > end):
        return ()
    step = api.PRICE_STEP
    if api.PRICE_SORTS[query.sort] > 0:
        low = _fen(at, ROUND_FLOOR)
        if not crowded and (start is None or low > start):
            return (with_prices(query, low, end),)
        if end is not None and low + step >= end:
            return (with_prices(query, low, end),) if low < end else (with_prices(query, low, low),)
        return (with_prices(query, low, low + step), with_prices(query, low + step, end))
    high = _fen(at, ROUND_CEILING)
    if not crowded and (end is None or high < end):
        return (with_prices(query, start, high),)
    floor = start if start is not None else Decimal(0)
    if high - step <= floor:
        return (with_prices(query, start, high),) if high > floor else \
            (with_prices(query, high, high),)
    return (with_prices(query, high - step, high), with_prices(query, start, high - step))


def _fen(price: Decimal, rounding: str) -> Decimal:
    """``price`` as a whole number of fen, rounded so."""
    return price.quantize(api.PRICE_STEP, rounding=rounding)


def crowded(query: Query, prices: Sequence[Decimal | None]) -> bool:
    """A full page of one price inside the query's range."""
    start, end = bounds(query)
    known = {p for p in prices if p is not None and (start is None or p >= start)
             and (end is None or p <= end)}
    return len(known) == 1 and all(p is not None for p in prices)


def plan_split(query: Query, *, by_price: bool = True) -> Split:
    """How a capped query that is not walked reaches everything.

    A price range is walked (in ``WALK_SORT``, the query's filters kept); a single price, or
    any query once the API was seen to ignore the price filter (``by_price`` false), is split
    by the first boolean filter it leaves open, both values — if the API took ``false`` as
    "either", that half is the parent again and simply goes on to the next filter, so nothing
    is lost either way; with every filter set, it is read under the other sorts.
    """
    if by_price and not is_point(query):
        return Split("walk", (replace(query, sort=WALK_SORT),))
    for name in api.FLAG_FILTERS:
        if getattr(query, name) is None:
            return Split("flag", (replace(query, **{name: True}), replace(query, **{name: False})))
    return Split("sort", tuple(replace(query, sort=s) for s in api.SORTS if s != query.sort))
