"""A product's price statistics (``price_stats``), kept up to date by the writer: pure functions.

The price line is a step line: from the first sighting at the price seen then (the first
change's old value, or the current price when it never changed), through each price change
``history`` records (in effect from its ``at``), to the last sighting. Statistics cover the 30,
90 and 180 days up to the last sighting, and all time; averages are weighted by time.

Answering "how cheap is it now, against its past" from ``history`` would read every change of
every product at each question. Instead each sighting advances a small state kept in the
product (``price_steps``): the change points that still matter to the 180-day window (the one
in effect when it starts, and every later one) and, for the line before them, its integral
(price * milliseconds), the milliseconds it had a price, and its lowest and highest price.
Times in the state are milliseconds since 1970 (what MongoDB keeps of a date): integers are
several times cheaper to store, read and subtract than dates, at every sighting. A window
slides forward only (the last sighting only moves on); points that fall out of it are folded
into those totals. The state is therefore bounded by the price changes of 180 days — at most one
per crawl — whatever the product's age.

A price that is null (the API gave none) is a stretch of the line without a price: it counts
neither in the lowest and highest nor in the average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

_DAY_MS = 86_400_000
#: The windows, by name, in milliseconds up to the last sighting; ``all`` is the whole line.
WINDOWS = {"d30": 30 * _DAY_MS, "d90": 90 * _DAY_MS, "d180": 180 * _DAY_MS}
#: The longest window: points before it matter only through the folded totals.
KEPT = max(WINDOWS.values())
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
#: What the writer reads of a stored product to advance its statistics.
PRICE_FIELDS = {"price_steps": 1, "price_stats.last_change": 1, "first_seen": 1, "last_seen": 1}

Point = list[Any]  # [at (ms since 1970), price (float | None)]


def ms(at: datetime) -> int:
    """A date as the state keeps it (exactly: MongoDB's dates are whole milliseconds)."""
    return (at - _EPOCH) // _MS


def new_steps(at: datetime, price: float | None) -> dict[str, Any]:
    """The state of a product first seen at ``at``."""
    return {"points": [[ms(at), price]], "sum": 0.0, "ms": 0, "min": None, "max": None}


def advance(
    steps: Mapping[str, Any], last_change: Mapping[str, Any] | None, now: datetime,
    price: float | None, change: Sequence[Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state and ``price_stats`` after a sighting at ``now``.

    ``change`` is the ``[old, new]`` price the sighting recorded in ``history``, if any; then
    ``price`` is ``new``. Without one, a line that never changed takes ``price`` as its only
    price (its first sighting's, by the definition above); a line that did keeps following
    ``history``.
    """
    points = [list(p) for p in steps["points"]]
    at = ms(now)
    if change is not None:
        old, new = change
        if last_change is None:  # the first sighting's price, as history has it
            points[-1][1] = old
        points.append([at, new])
        last_change = {"at": now, "from": old, "to": new, "pct": _pct(old, new)}
    elif last_change is None:
        points[-1][1] = price
    state = {**steps, "points": points}
    stats = statistics(state, last_change, now)
    return _folded(state, at - KEPT), stats


def statistics(
    steps: Mapping[str, Any], last_change: Mapping[str, Any] | None, as_of: datetime
) -> dict[str, Any]:
    """``price_stats`` of a line up to ``as_of`` (its last sighting)."""
    points = steps["points"]
    start, end = points[0][0], ms(as_of)
    if len(points) == 1 and not steps["ms"] and steps["min"] is None:
        # One price all along, nothing folded (most products, every crawl): each window is
        # that price, which the general sum below reached through rounding, at more CPU (B3).
        price = points[0][1]
        stats: dict[str, Any] = {name: {"min": price, "max": price, "avg": price}
                                 for name in (*WINDOWS, "all")}
    else:
        stats = {name: _window(points, max(end - length, start), end)
                 for name, length in WINDOWS.items()}
        stats["all"] = _window(points, start, end,
                               (steps["sum"], steps["ms"], steps["min"], steps["max"]))
    total = stats["all"]
    current = points[-1][1]
    stats["last_change"] = dict(last_change) if last_change is not None else None
    stats["vs_avg90"] = _ratio(current, stats["d90"]["avg"])
    stats["vs_min"] = _ratio(current, total["min"])
    stats["as_of"] = as_of
    return stats


def _window(
    points: Sequence[Point], start: int, end: int,
    before: tuple[float, int, float | None, float | None] = (0.0, 0, None, None),
) -> dict[str, float | None]:
    """Lowest, highest and time-weighted average price over ``[start, end]``.

    A price counts when it is in effect at some moment of the window: a change exactly at
    ``start`` replaces the price before it. ``before`` adds a folded part of the line.
    """
    total, weight, low, high = before
    last = len(points) - 1
    for i, (at, price) in enumerate(points):
        following = points[i + 1][0] if i < last else end
        if price is None or (i < last and following <= start):
            continue
        if low is None or price < low:
            low = price
        if high is None or price > high:
            high = price
        length = following - (at if at > start else start)
        if length > 0:
            total += price * length
            weight += length
    # A single moment (one sighting): the price then.
    average = total / weight if weight > 0 else points[-1][1] if low is not None else None
    return {"min": low, "max": high, "avg": average}


def _folded(steps: dict[str, Any], horizon: int) -> dict[str, Any]:
    """Fold the points before the one in effect at ``horizon`` into the state's totals."""
    points = steps["points"]
    keep = 0
    while keep + 1 < len(points) and points[keep + 1][0] <= horizon:
        keep += 1
    if keep == 0:
        return steps
    total, weight, low, high = steps["sum"], steps["ms"], steps["min"], steps["max"]
    for (at, price), (following, _) in pairwise(points[:keep + 1]):
        if price is None:
            continue
        total += price * (following - at)
        weight += following - at
        low = price if low is None else min(low, price)
        high = price if high is None else max(high, price)
    return {"points": points[keep:], "sum": total, "ms": weight, "min": low, "max": high}


def replayed(
    first_seen: datetime, changes: Sequence[tuple[datetime, Sequence[Any]]],
    current: float | None, through: datetime,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The state of a product stored before ``price_steps`` existed, from its price changes
    (``(at, [old, new])``, oldest first) up to its last sighting ``through``; and its last
    change."""
    steps = new_steps(first_seen, changes[0][1][0] if changes else current)
    last_change = None
    for at, change in changes:
        steps, stats = advance(steps, last_change, at, change[1], change)
        last_change = stats["last_change"]
    steps, _ = advance(steps, last_change, through, current, None)
    return steps, last_change


def _pct(old: float | None, new: float | None) -> float | None:
    if old is None or new is None or old == 0:
        return None
    return (new - old) / old * 100


def _ratio(price: float | None, reference: float | None) -> float | None:
    if price is None or reference is None or reference == 0:
        return None
    return price / reference
