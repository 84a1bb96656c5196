"""The storage writer (item pipeline) and the crawl-run recorder, in-process, on a real mongod.

The engine opens the spider as in a crawl (scheduler, item pipelines, ``spider_opened``), pages
of products go straight into the configured item pipeline, and the engine closes the spider:
what MongoDB holds afterwards is compared with what went in. Odd items are the sandbox's own
(``tmapi_crawler.sandbox.misbehaviour``), so the crawls against the sandbox meet the same ones.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest
from scrapy.crawler import Crawler
from scrapy.utils.misc import load_object

from tests.inprocess import crawler_for, engine_stopped, project_settings, until
from tests.servers import MongodProcess
from tmapi_crawler import closing
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.items import ProductItem, ProductPage, QueryContext
from tmapi_crawler.normalize import normalize, translated_fields
from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.misbehaviour import (
    ANONYMOUS_KINDS,
    ODD_KINDS,
    STORABLE_KINDS,
    odd_item_json,
)
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS, REJECTED
from tmapi_crawler.storage.store import ProductStore

CATALOG = Catalog(default_size=60)
CAT_ID = 7


def raw_items(count: int, start: int = 0, language: str = "en") -> list[dict[str, Any]]:
    return CATALOG.query(CAT_ID, language)[start:start + count]


def odd(raw: dict[str, Any], kind: str) -> dict[str, Any]:
    """The item as the sandbox serves it odd, decoded as the spider decodes an answer."""
    decoded: dict[str, Any] = json.loads(odd_item_json(raw, kind, 17 * 2**20))
    return decoded


def page(raws: list[dict[str, Any]], number: int = 1) -> ProductPage:
    return ProductPage([
        ProductItem.from_raw(raw, QueryContext(CAT_ID, "en", "default", {}, number, position))
        for position, raw in enumerate(raws)
    ])


def refused_by_mongodb(raw: dict[str, Any]) -> ProductItem:
    """An item normalisation accepted (as a version without this check would) holding a value
    only the server refuses: nesting deeper than MongoDB takes."""
    deep: dict[str, Any] = {}
    nested = deep
    for _ in range(190):
        nested["x"] = {}
        nested = nested["x"]
    item = ProductItem.from_raw(raw, QueryContext(CAT_ID, "en", "default", {}, 9, 0))
    item.raw = {**raw, "extra": deep}
    return item


Scenario = Callable[[Crawler, Any], Awaitable[Any]]


def run(mongod: MongodProcess, database: str, tmp_path: Path, scenario: Scenario,
        reason: str = "finished", **settings: Any) -> tuple[Any, dict[str, Any]]:
    """Open a crawl storing into ``database``, run ``scenario`` with its item pipeline, close
    the crawl with ``reason``; return what the scenario returned and the final stats."""

    async def main() -> tuple[Any, dict[str, Any]]:
        crawler = crawler_for(project_settings(
            MONGO_URI=mongod.uri, MONGO_DATABASE=database, MONGO_SPILL_DIR=str(tmp_path),
            **settings), cat_id=str(CAT_ID))
        pipeline_class = load_object(next(iter(crawler.settings.getdict("ITEM_PIPELINES"))))
        await crawler.engine.open_spider_async()
        pipeline = crawler.get_item_pipeline(pipeline_class)
        try:
            result = await scenario(crawler, pipeline)
        finally:
            if crawler.engine.spider is not None:
                await crawler.engine.close_spider_async(reason=reason)
            await engine_stopped(crawler)
        return result, crawler.stats.get_stats()

    return asyncio.run(main())


def feed(*pages: ProductPage) -> Scenario:
    async def scenario(crawler: Crawler, pipeline: Any) -> list[ProductPage]:
        stored: list[ProductPage] = []

        def settled(items: list[ProductPage]) -> None:
            stored.extend(items)

        crawler.signals.connect(settled, signal=tmapi_signals.items_stored, weak=False)
        for each in pages:
            await pipeline.process_item(each)
        await pipeline.close_spider()
        return stored
    return scenario


def test_odd_items_are_rejected_one_at_a_time(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
    tmp_path: Path,
) -> None:
    good = raw_items(10)
    odds = raw_items(len(ODD_KINDS), start=10)
    served = good + [odd(raw, kind) for raw, kind in zip(odds, ODD_KINDS, strict=True)]
    stored_pages, stats = run(mongod, mongo_db_name, tmp_path, feed(page(served)))
    db = mongo_client[mongo_db_name]
    storable = [raw["item_id"] for raw, kind in zip(odds, ODD_KINDS, strict=True)
                if kind in STORABLE_KINDS]
    assert {d["_id"] for d in db[PRODUCTS].find()} == {r["item_id"] for r in good} | set(storable)
    rejected = {d["context"]["position"]: d for d in db[REJECTED].find()}
    assert len(rejected) == len(ODD_KINDS) - len(STORABLE_KINDS)
    assert stats[stats_keys.ITEMS_REJECTED] == len(rejected)
    assert stats[stats_keys.DB_SIGHTINGS] == len(good) + len(storable)
    for position, (raw, kind) in enumerate(zip(odds, ODD_KINDS, strict=True), len(good)):
        if kind in STORABLE_KINDS:
            assert position not in rejected
            continue
        document = rejected[position]
        assert document["reason"], kind
        assert document["crawl_id"] == stats[stats_keys.CRAWL_ID]
        assert document["item_id"] == (None if kind in ANONYMOUS_KINDS else raw["item_id"])
        assert document["context"]["cat_id"] == CAT_ID
        assert ("raw" in document) != ("raw_text" in document)
        assert len(json.dumps(document, default=str)) < 100_000
    assert len(stored_pages) == 1, "the page is settled: a cluster can acknowledge its lease"
    run_document = db[CRAWL_RUNS].find_one({"_id": stats[stats_keys.CRAWL_ID]})
    assert run_document["finish_reason"] == "finished"
    assert run_document["counts"]["rejected"] == len(rejected)


def test_an_id_beyond_64_bits_reaches_rejected_items(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
    tmp_path: Path,
) -> None:
    served = [odd(raw_items(1)[0], "huge_id")]
    _, stats = run(mongod, mongo_db_name, tmp_path, feed(page(served)))
    [document] = mongo_client[mongo_db_name][REJECTED].find()
    assert document["item_id"] is None
    assert document["reason"].startswith("item_id: ")
    assert "100000000000000000000" in document["raw_text"]
    assert stats[stats_keys.ITEMS_REJECTED] == 1
    assert stats_keys.incomplete(CAT_ID) in stats  # an unknown product: nothing vanishes


def test_a_document_mongodb_refuses_is_rejected_alone(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
    tmp_path: Path,
) -> None:
    good = raw_items(8)
    bad = refused_by_mongodb(raw_items(1, start=8)[0])
    stored_pages, stats = run(mongod, mongo_db_name, tmp_path,
                              feed(page(good), ProductPage([bad])))
    db = mongo_client[mongo_db_name]
    assert {d["_id"] for d in db[PRODUCTS].find()} == {r["item_id"] for r in good}
    [document] = db[REJECTED].find()
    assert document["item_id"] == bad.item_id
    assert document["reason"].startswith("MongoDB refused it: ")
    assert "raw_text" in document
    assert stats[stats_keys.DB_REFUSED] == 1 == stats[stats_keys.ITEMS_REJECTED]
    assert stats[stats_keys.DB_SIGHTINGS] == len(good)
    assert len(stored_pages) == 2


def test_periodic_flushing_goes_on_after_a_failed_flush(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures: list[int] = []
    write_products = ProductStore.write_products

    async def fails_once(self: ProductStore, *args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug in a flush")
        return await write_products(self, *args, **kwargs)

    monkeypatch.setattr(ProductStore, "write_products", fails_once)
    first, second = raw_items(5), raw_items(5, start=5)
    products = mongo_client[mongo_db_name][PRODUCTS]

    async def scenario(crawler: Crawler, pipeline: Any) -> None:
        await pipeline.process_item(page(first))
        await until(lambda: failures, what="the failed flush")
        await pipeline.process_item(page(second, number=2))
        # The ticker alone must store the second page: the crawl is still running.
        await until(lambda: products.count_documents({}) == len(second), timeout=20,
                    what="the second page flushed")

    _, stats = run(mongod, mongo_db_name, tmp_path, scenario, MONGO_FLUSH_INTERVAL=0.05,
                   MONGO_BATCH_SIZE=1000)
    assert {d["_id"] for d in products.find()} == {r["item_id"] for r in second}
    spilled = [json.loads(line) for line in
               (tmp_path / f"{stats[stats_keys.CRAWL_ID]}.jsonl").read_text().splitlines()]
    assert [s["item_id"] for s in spilled] == [r["item_id"] for r in first]
    assert stats[stats_keys.ITEMS_SPILLED] == len(first)
    assert stats[stats_keys.DB_FLUSH_ERRORS] == 1


def test_vanished_marks_and_history_come_from_what_was_stored(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
    tmp_path: Path,
) -> None:
    """A re-crawl whose items are rejected or refused must not call them gone, nor write
    history for a product it did not store."""
    listed = raw_items(6)
    run(mongod, mongo_db_name, tmp_path / "1", feed(page(listed)))
    db = mongo_client[mongo_db_name]
    cheaper = [{**raw, "price": "0.01"} for raw in listed]
    again = [*cheaper[:4], odd(cheaper[4], "big_int")]
    refused = refused_by_mongodb(cheaper[5])
    _, stats = run(mongod, mongo_db_name, tmp_path / "2",
                   feed(page(again), ProductPage([refused])))
    crawl_id = stats[stats_keys.CRAWL_ID]
    assert stats[stats_keys.product_count("vanished")] == 0
    assert db[PRODUCTS].count_documents({"vanished": {"$exists": True, "$ne": {}}}) == 0
    history = {d["item_id"] for d in db[HISTORY].find({"crawl_id": crawl_id})}
    assert history == {raw["item_id"] for raw in cheaper[:4]}
    for raw in listed[4:]:
        assert db[PRODUCTS].find_one({"_id": raw["item_id"]})["seen_in"][str(CAT_ID)] == crawl_id


def test_mongodb_gone_for_good_spills_the_batch_and_stops(
    mongo_db_name: str, tmp_path: Path
) -> None:
    items = raw_items(4)
    with MongodProcess(tmp_path / "db") as server:

        async def scenario(crawler: Crawler, pipeline: Any) -> str:
            server.stop()
            await pipeline.process_item(page(items))
            await pipeline.flush()
            return closing.stop_reason(crawler)

        reason, stats = run(server, mongo_db_name, tmp_path / "spill", scenario,
                       MONGO_RETRY_TIMEOUT=0.5, MONGO_BATCH_SIZE=1000, MONGO_FLUSH_INTERVAL=60)
    spill = tmp_path / "spill" / f"{stats[stats_keys.CRAWL_ID]}.jsonl"
    assert [json.loads(line)["item_id"] for line in spill.read_text().splitlines()] == [
        raw["item_id"] for raw in items]
    assert stats[stats_keys.ITEMS_SPILLED] == len(items)
    assert stat.S_IMODE(spill.parent.stat().st_mode) == 0o700  # the user's alone
    assert reason == closing.MONGODB_UNAVAILABLE


def test_a_forced_stop_stores_the_buffer_and_records_the_end(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
    tmp_path: Path,
) -> None:
    """What the forced-stop guard sends on a second Ctrl-C (the crawl test sends a real one)."""
    items = raw_items(7)

    async def scenario(crawler: Crawler, pipeline: Any) -> None:
        await pipeline.process_item(page(items))
        signals = crawler.signals
        await signals.send_catch_log_async(tmapi_signals.forced_stop, reason="shutdown")
        await signals.send_catch_log_async(tmapi_signals.crawl_killed, reason="shutdown")
        crawler.engine.spider = None  # the reactor stops here: the spider is never closed

    _, stats = run(mongod, mongo_db_name, tmp_path, scenario, MONGO_BATCH_SIZE=1000,
                   MONGO_FLUSH_INTERVAL=60)
    db = mongo_client[mongo_db_name]
    assert db[PRODUCTS].count_documents({}) == len(items)
    record = db[CRAWL_RUNS].find_one({"_id": stats[stats_keys.CRAWL_ID]})
    assert (record["status"], record["finish_reason"]) == ("killed", "shutdown")
    assert record["counts"]["products_seen"] == len(items)


def test_what_is_stored_is_what_normalisation_read(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
    tmp_path: Path,
) -> None:
    raws = raw_items(3, language="zh")
    zh_page = ProductPage([
        ProductItem.from_raw(raw, QueryContext(CAT_ID, "zh", "sales", {}, 1, i))
        for i, raw in enumerate(raws)
    ])
    run(mongod, mongo_db_name, tmp_path, feed(zh_page))
    for raw in raws:
        stored = mongo_client[mongo_db_name][PRODUCTS].find_one({"_id": raw["item_id"]})
        typed = normalize(raw)
        assert {k: stored[k] for k in typed if k != "item_id"} == {
            k: v for k, v in typed.items() if k != "item_id"}
        assert stored["titles"]["zh"] == translated_fields(raw)["title"]
        assert stored["raw"]["zh"] == raw


def test_a_forced_stop_spills_what_mongodb_does_not_take_in_time(
    mongo_db_name: str, tmp_path: Path
) -> None:
    items = raw_items(6)
    with MongodProcess(tmp_path / "db") as server:

        async def scenario(crawler: Crawler, pipeline: Any) -> None:
            server.stop()
            # A page is written at once: this one's write waits for MongoDB.
            writing = asyncio.ensure_future(pipeline.process_item(page(items)))
            while pipeline._writing is None:
                await asyncio.sleep(0)  # the write has begun: no time passes
            signals = crawler.signals
            await signals.send_catch_log_async(tmapi_signals.forced_stop, reason="shutdown")
            await pipeline.process_item(page(raw_items(2, start=6), number=2))  # still arriving
            writing.cancel()
            crawler.engine.spider = None  # the reactor stops here: the spider is never closed

        _, stats = run(server, mongo_db_name, tmp_path / "spill", scenario,
                       MONGO_RETRY_TIMEOUT=60, MONGO_BATCH_SIZE=1000, MONGO_FLUSH_INTERVAL=60,
                       TMAPI_FORCED_STOP_TIMEOUT=0.5)
    spill = tmp_path / "spill" / f"{stats[stats_keys.CRAWL_ID]}.jsonl"
    assert [json.loads(line)["item_id"] for line in spill.read_text().splitlines()] == [
        raw["item_id"] for raw in raw_items(8)]
    assert stats[stats_keys.ITEMS_SPILLED] == 8
