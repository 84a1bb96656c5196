"""B9: what keeping ``price_stats`` costs the writer, per 1,000 products, beside not keeping it.

The writer (``ProductStore.write_products``, with ``updates_by_id`` before it, as the pipeline
calls them) stores the same crawls twice into a real mongod, once with ``price_stats`` and once
without, interleaved, ``ROUNDS`` times; the least of each measure counts. The crawls are those
of a catalogue whose prices move (a fifth of them per crawl), ``DAYS_APART`` days apart, so
that the 180-day window fills and slides. Items are built before the clock starts: what is
measured is the writer's own CPU (this process), its time, and mongod's CPU (``/proc``).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymongo

from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.items import build_item
from tmapi_crawler.storage.collections import PRODUCTS
from tmapi_crawler.storage.documents import updates_by_id
from tmapi_crawler.storage.store import ProductStore

if TYPE_CHECKING:
    from tests.benchmarks.run import Bench

CATEGORIES = {9001: 2500, 9003: 2500}
CRAWLS = 16
DAYS_APART = 12
BATCH = 100  # MONGO_BATCH_SIZE's default
ROUNDS = 3
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _crawls() -> list[list[ProductItem]]:
    catalog = Catalog(sizes=CATEGORIES, overlap=0.0)
    crawls = []
    for epoch in range(CRAWLS):
        items = []
        for cat_id in CATEGORIES:
            context = QueryContext(cat_id, "en", "default", {}, 1, 0)
            items += [ProductItem.from_raw(build_item(p, "en"), context)
                      for p in catalog.products(cat_id, epoch)]
        crawls.append(items)
    return crawls


def _mongod_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _store_all(uri: str, database: str, keep: bool, crawls: list[list[ProductItem]],
                     mongod_pid: int) -> dict[str, float]:
    """Store every crawl; CPU and time of the first crawl (all new) and of the others."""
    store = ProductStore(uri, database, retry_timeout=30, price_stats=keep)
    await store.open()
    spent = {"cpu_new": 0.0, "cpu_again": 0.0, "wall_again": 0.0, "mongod_again": 0.0}
    try:
        for number, items in enumerate(crawls):
            crawl_id = f"b9-{number}"
            now = T0 + timedelta(days=DAYS_APART * number)
            cpu, wall, mongod = time.process_time(), time.perf_counter(), _mongod_cpu(mongod_pid)
            for start in range(0, len(items), BATCH):
                updates = updates_by_id(items[start:start + BATCH], crawl_id, now)
                await store.write_products(updates, crawl_id, now)
            if number == 0:
                spent["cpu_new"] += time.process_time() - cpu
            else:
                spent["cpu_again"] += time.process_time() - cpu
                spent["wall_again"] += time.perf_counter() - wall
                spent["mongod_again"] += _mongod_cpu(mongod_pid) - mongod
    finally:
        await store.close()
    return spent


def price_stats_cost(bench: Bench) -> dict[str, Any]:
    """B9: the writer's CPU and time per 1,000 products with and without ``price_stats``."""
    crawls = _crawls()
    pid = bench.mongod.pid
    assert pid is not None
    products = len(crawls[0])
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    sizes: dict[bool, float] = {}
    for _ in range(ROUNDS):
        for keep in (False, True):
            database = bench.database()
            runs[keep].append(asyncio.run(_store_all(
                bench.mongod.uri, database, keep, crawls, pid)))
            with pymongo.MongoClient(bench.mongod.uri) as client:
                size = next(client[database][PRODUCTS].aggregate([{"$group": {
                    "_id": None, "bytes": {"$avg": {"$bsonSize": "$$ROOT"}}}}]))["bytes"]
                sizes[keep] = size
                client.drop_database(database)

    def per_k(keep: bool, name: str, sightings: int) -> float:
        return min(r[name] for r in runs[keep]) / sightings * 1000 * 1000  # ms

    again = products * (CRAWLS - 1)
    result: dict[str, Any] = {"products": products, "crawls": CRAWLS}
    for name, sightings in (("cpu_new", products), ("cpu_again", again),
                            ("wall_again", again), ("mongod_again", again)):
        without, with_ = per_k(False, name, sightings), per_k(True, name, sightings)
        result[f"{name}_ms_per_1k_without"] = round(without, 1)
        result[f"{name}_ms_per_1k_with"] = round(with_, 1)
        result[f"{name}_ratio"] = round(with_ / without, 2)
    result["bytes_per_product_without"] = round(sizes[False])
    result["bytes_per_product_with"] = round(sizes[True])
    return result
