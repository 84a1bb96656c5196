"""``price_stats``: what the writer keeps, against what ``history`` implies, recomputed slowly.

The slow way (``slow_stats``) rebuilds each product's step line from its ``history`` documents
and measures each window afresh; the writer's way advances a bounded state one sighting at a
time. They must agree for every product: after real sandbox crawls with moved prices, after
sightings months apart (windows sliding, points folded away), and for products stored before
``price_stats`` existed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.crawling import TOKEN
from tests.inprocess import crawl_in_process
from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.items import build_item
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.storage import prices
from tmapi_crawler.storage.collections import HISTORY, PRODUCTS
from tmapi_crawler.storage.documents import updates_by_id
from tmapi_crawler.storage.store import ProductStore

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW_DAYS = {"d30": 30, "d90": 90, "d180": 180}


def slow_stats(first_seen: datetime, last_seen: datetime, current: float | None,
               changes: list[tuple[datetime, float | None, float | None]]) -> dict[str, Any]:
    """``price_stats`` from the whole line, measured window by window; no state."""
    line = [(first_seen, changes[0][1] if changes else current)]
    line += [(at, new) for at, _, new in changes]
    segments = [(at, line[i + 1][0] if i + 1 < len(line) else last_seen, price)
                for i, (at, price) in enumerate(line)]

    def window(start: datetime) -> dict[str, float | None]:
        start = max(start, first_seen)
        inside = [(max(a, start), b, p) for n, (a, b, p) in enumerate(segments)
                  if p is not None and (b > start or n == len(segments) - 1)]
        found = [p for _, _, p in inside]
        weighted = [(p, (b - a).total_seconds()) for a, b, p in inside if b > a]
        seconds = sum(s for _, s in weighted)
        if seconds:
            average = sum(p * s for p, s in weighted) / seconds
        else:
            average = line[-1][1] if found else None
        return {"min": min(found, default=None), "max": max(found, default=None),
                "avg": average}

    stats: dict[str, Any] = {n: window(last_seen - d * DAY) for n, d in WINDOW_DAYS.items()}
    stats["all"] = window(first_seen)
    now = line[-1][1]
    if changes:
        at, old, new = changes[-1]
        pct = (new - old) / old * 100 if old and new is not None else None
        stats["last_change"] = {"at": at, "from": old, "to": new, "pct": pct}
    else:
        stats["last_change"] = None
    stats["vs_avg90"] = now / stats["d90"]["avg"] if now is not None and stats["d90"]["avg"] \
        else None
    stats["vs_min"] = now / stats["all"]["min"] if now is not None and stats["all"]["min"] \
        else None
    stats["as_of"] = last_seen
    return stats


def same(kept: Any, expected: Any) -> bool:
    """Equal, numbers within float rounding (sums run in another order)."""
    if isinstance(expected, dict):
        return isinstance(kept, dict) and kept.keys() == expected.keys() and all(
            same(kept[k], v) for k, v in expected.items())
    if isinstance(expected, float) and isinstance(kept, float | int):
        return math.isclose(kept, expected, rel_tol=1e-9)
    return kept == expected


def assert_same(kept: dict[str, Any], expected: dict[str, Any], what: Any) -> None:
    assert same(kept, expected), (what, kept, expected)


def recomputed_from_history(db: Any) -> int:
    """Check every product against its ``history``; returns how many moved in price."""
    changes: dict[int, list[tuple[datetime, Any, Any]]] = {}
    for entry in db[HISTORY].find({"changes.price": {"$exists": True}}).sort("at", 1):
        old, new = entry["changes"]["price"]
        changes.setdefault(entry["item_id"], []).append((entry["at"], old, new))
    count = 0
    for product in db[PRODUCTS].find():
        item_id = product["_id"]
        expected = slow_stats(product["first_seen"], product["last_seen"], product["price"],
                              changes.get(item_id, []))
        assert_same(product["price_stats"], expected, item_id)
        count += 1
    assert count
    return len(changes)


# The pure functions.


def sighted(events: list[tuple[datetime, float | None, bool]]
            ) -> tuple[dict[str, Any], dict[str, Any], list[tuple[datetime, Any, Any]]]:
    """Advance a line through ``(at, price, changed)`` sightings, as the writer does; returns
    its state, its last statistics and the changes (for the slow way)."""
    (first, price, _), *rest = events
    steps, stats = prices.advance(prices.new_steps(first, price), None, first, price, None)
    changes = []
    current = price
    for at, price, changed in rest:
        change = [current, price] if changed else None
        if changed:
            changes.append((at, current, price))
            current = price
        steps, stats = prices.advance(steps, stats["last_change"], at, price, change)
    return steps, stats, changes


def test_one_sighting_is_its_own_lowest_highest_and_average() -> None:
    _, stats, _ = sighted([(T0, 12.5, False)])
    for name in (*WINDOW_DAYS, "all"):
        assert stats[name] == {"min": 12.5, "max": 12.5, "avg": 12.5}
    assert stats["last_change"] is None
    assert stats["vs_avg90"] == stats["vs_min"] == 1.0
    assert stats["as_of"] == T0


def test_a_price_that_never_changed_is_the_current_one_from_the_first_sighting() -> None:
    # Seen at 10 and then, in the same crawl, at 11 (another sort): no history, so the line
    # is the current price throughout, and it never grows.
    steps, stats, _ = sighted([(T0, 10.0, False), (T0 + DAY, 11.0, False),
                               (T0 + 400 * DAY, 11.0, False)])
    assert steps["points"] == [[prices.ms(T0), 11.0]]
    assert stats["all"] == {"min": 11.0, "max": 11.0, "avg": 11.0}
    assert stats["d30"] == stats["all"]
    assert stats == slow_stats(T0, T0 + 400 * DAY, 11.0, [])


def test_a_change_exactly_at_a_window_start_replaces_the_price_before_it() -> None:
    changed_at = T0 + 100 * DAY
    end = changed_at + 30 * DAY
    _, stats, changes = sighted([(T0, 10.0, False), (changed_at, 20.0, True), (end, 20.0, False)])
    assert stats["d30"] == {"min": 20.0, "max": 20.0, "avg": 20.0}, "the old price is gone"
    assert stats["d90"] == {"min": 10.0, "max": 20.0, "avg": (60 * 10 + 30 * 20) / 90}
    assert stats["all"]["avg"] == pytest.approx((100 * 10 + 30 * 20) / 130)
    assert stats["last_change"] == {"at": changed_at, "from": 10.0, "to": 20.0, "pct": 100.0}
    assert stats["vs_min"] == 2.0
    assert_same(stats, slow_stats(T0, end, 20.0, changes), "boundary")


def test_a_change_at_the_last_sighting_counts_as_a_moment() -> None:
    _, stats, changes = sighted([(T0, 10.0, False), (T0 + 10 * DAY, 5.0, True)])
    assert stats["d30"] == {"min": 5.0, "max": 10.0, "avg": 10.0}
    assert stats["vs_avg90"] == 0.5
    assert stats["vs_min"] == 1.0, "at its lowest ever"
    assert stats["last_change"]["pct"] == -50.0
    assert_same(stats, slow_stats(T0, T0 + 10 * DAY, 5.0, changes), "moment")


def test_windows_slide_over_a_year_and_the_state_stays_bounded() -> None:
    events: list[tuple[datetime, float | None, bool]] = [(T0, 50.0, False)]
    at, price = T0, 50.0
    for step in range(1, 120):
        at += timedelta(days=3, hours=step % 7)
        changed = step % 4 == 0
        if changed:
            price = None if step % 28 == 0 else round(50 + 7 * ((step * 37) % 11 - 5), 2)
        events.append((at, price, changed))
        steps, stats, changes = sighted(events)
        assert_same(stats, slow_stats(T0, at, changes[-1][2] if changes else 50.0, changes),
                    at)
        in_window = [c for c in changes if c[0] > at - 180 * DAY]
        assert len(steps["points"]) <= len(in_window) + 1
    assert steps["ms"] > 0, "points left the window and were folded"


def test_a_null_price_has_no_statistics_until_there_is_one() -> None:
    _, stats, changes = sighted([(T0, None, False), (T0 + 5 * DAY, None, False),
                                 (T0 + 10 * DAY, 8.0, True), (T0 + 20 * DAY, 8.0, False)])
    assert stats["all"] == {"min": 8.0, "max": 8.0, "avg": 8.0}
    assert stats["last_change"]["pct"] is None
    assert_same(stats, slow_stats(T0, T0 + 20 * DAY, 8.0, changes), "null")
    _, stats, _ = sighted([(T0, None, False)])
    assert stats["all"] == {"min": None, "max": None, "avg": None}
    assert stats["vs_avg90"] is stats["vs_min"] is None


def test_a_replayed_line_is_the_line_advanced_sighting_by_sighting() -> None:
    events = [(T0, 3.0, False), (T0 + 50 * DAY, 4.0, True), (T0 + 70 * DAY, 4.0, False),
              (T0 + 250 * DAY, 2.5, True), (T0 + 300 * DAY, 2.5, False)]
    steps, stats, changes = sighted(events)
    replayed, last_change = prices.replayed(
        T0, [(at, [old, new]) for at, old, new in changes], 2.5, T0 + 300 * DAY)
    assert last_change == stats["last_change"]
    assert replayed["points"] == steps["points"]
    assert replayed["sum"] == pytest.approx(steps["sum"])
    assert_same(prices.statistics(replayed, last_change, T0 + 300 * DAY), stats, "replayed")


# The writer, against real crawls and a real mongod.

SIZES = {"301": 60, "303": 40}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES) as process:
        yield process


def test_price_stats_equal_what_history_implies_after_crawls_with_moved_prices(
    sandbox, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    db = mongo_client[mongo_db_name]
    args = ("cat_id=301,303", "language=en,zh", "sort=default,sales")
    for epoch in range(3):
        sandbox.configure(price_epoch=epoch)
        result = crawl_in_process(tmp_path / str(epoch), *args, base_url=sandbox.url,
                                  mongo_uri=mongod.uri, database=mongo_db_name,
                                  settings={"MONGO_BATCH_SIZE": 20})
        assert result.returncode == 0, result.log[-3000:]
    moved = recomputed_from_history(db)
    assert moved > 0.2 * db[PRODUCTS].count_documents({})
    assert db[PRODUCTS].count_documents({"price_stats.last_change": {"$ne": None}}) == moved
    # The README's two lookups: each one index range, reading only the products it returns.
    lookups = {
        "vs_avg90": ({"price_stats.vs_avg90": {"$lte": 0.85}}, "price_stats.vs_avg90"),
        "vs_min_drop": ({"price_stats.vs_min": 1, "price_stats.last_change.pct": {"$lt": 0}},
                        "price_stats.last_change.pct"),
    }
    for index, (query, order) in lookups.items():
        found = list(db[PRODUCTS].find(query).sort(order, 1))
        assert found, index
        explained = db.command("explain", {"find": PRODUCTS, "filter": query,
                                           "sort": {order: 1}}, verbosity="executionStats")
        assert f"'indexName': '{index}'" in str(explained["queryPlanner"]["winningPlan"])
        run = explained["executionStats"]
        assert run["nReturned"] == run["totalKeysExamined"] == run["totalDocsExamined"] \
            == len(found), run
        assert "'stage': 'SORT'" not in str(explained), "sorted by the index"


CATALOG = Catalog(sizes={7: 40, 9: 40}, overlap=0.0)


def sightings(cat_id: int, epoch: int) -> list[ProductItem]:
    context = QueryContext(cat_id, "en", "default", {}, 1, 0)
    return [ProductItem.from_raw(build_item(product, "en"), context)
            for product in CATALOG.products(cat_id, epoch)]


def test_windows_slide_over_months_of_crawls_and_older_products_catch_up(
    mongod, mongo_client, mongo_db_name
) -> None:
    """Crawls days apart for a year (the writer driven with their times); category 9 first
    stored by a writer that kept no ``price_stats``, as before they existed."""

    async def scenario() -> None:
        before = ProductStore(mongod.uri, mongo_db_name, retry_timeout=10, price_stats=False)
        store = ProductStore(mongod.uri, mongo_db_name, retry_timeout=10)
        await before.open()
        await store.open()
        try:
            for run in range(40):
                now = T0 + run * timedelta(days=9, hours=5, milliseconds=run)
                crawl_id = f"c{run}"
                epoch = run // 2  # a fifth of the prices move every other crawl
                for cat_id in (7, 9):
                    writer = before if cat_id == 9 and run < 25 else store
                    updates = updates_by_id(sightings(cat_id, epoch), crawl_id, now)
                    await writer.write_products(updates, crawl_id, now)
        finally:
            await before.close()
            await store.close()

    asyncio.run(scenario())
    db = mongo_client[mongo_db_name]
    moved = recomputed_from_history(db)
    assert moved > 0.5 * db[PRODUCTS].count_documents({})
    longest = max(len(p["price_steps"]["points"]) for p in db[PRODUCTS].find())
    assert longest <= 180 // 9 + 1, "points older than the longest window are folded away"
    assert db[PRODUCTS].count_documents({"price_steps.ms": {"$gt": 0}}) > 0
