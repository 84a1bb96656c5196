"""What changed between crawls: ``history`` documents and products gone from a category.

Whole crawls of the sandbox (in-process) into a real mongod, compared with what the products
held before and after (and with the catalogue's own record of which prices moved); the store's
batch writes are also driven directly, to replay a retried batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.crawling import TOKEN, CrawlResult
from tests.inprocess import crawl_in_process
from tests.servers import MongodProcess
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.items import build_item
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.storage.collections import HISTORY, LEDGER, PRODUCTS
from tmapi_crawler.storage.documents import batch_now, updates_by_id
from tmapi_crawler.storage.history import AVAILABLE_IN, TRACKED_FIELDS
from tmapi_crawler.storage.ledger import ledger_document
from tmapi_crawler.storage.store import ProductStore

# Not neighbours: resizing 301 leaves 303 (which borrows from 302) as it is.
SIZES = {"301": 120, "303": 80}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES) as server:
        yield server


@pytest.fixture
def fresh(sandbox: SandboxProcess) -> SandboxProcess:
    sandbox.reset()
    sandbox.configure(price_epoch=0, sizes=SIZES, fault_rates={})
    return sandbox


def run(tmp_path: Path, name: str, sandbox: SandboxProcess, mongod: MongodProcess,
        database: str, *arguments: str) -> CrawlResult:
    """A crawl into ``database``, in-process: what it stores is the subject, not the process."""
    result = crawl_in_process(tmp_path / name, *arguments, base_url=sandbox.url,
                              mongo_uri=mongod.uri, database=database,
                              settings={"MONGO_BATCH_SIZE": 50})
    assert result.returncode == 0, result.log[-3000:]
    return result


def products(db: Any) -> dict[int, dict[str, Any]]:
    return {d["_id"]: d for d in db[PRODUCTS].find()}


def history_of(db: Any, crawl_id: str) -> dict[int, dict[str, Any]]:
    documents = list(db[HISTORY].find({"crawl_id": crawl_id}))
    by_item = {d["item_id"]: d for d in documents}
    assert len(by_item) == len(documents), "one document per product and crawl"
    return by_item


def test_a_recrawl_records_exactly_the_products_whose_tracked_values_changed(
    fresh, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    db = mongo_client[mongo_db_name]
    args = ("cat_id=301,303", "language=en,zh", "sort=default,sales")
    first = run(tmp_path, "1", fresh, mongod, mongo_db_name, *args)
    assert db[HISTORY].count_documents({}) == 0, "new products have no history"
    before = products(db)
    fresh.configure(price_epoch=1)
    second = run(tmp_path, "2", fresh, mongod, mongo_db_name, *args)
    after = products(db)
    assert after.keys() == before.keys()

    expected = {}
    for item_id, old in before.items():
        changes = {f: [old[f], after[item_id][f]] for f in TRACKED_FIELDS
                   if old[f] != after[item_id][f]}
        if changes:
            expected[item_id] = changes
    crawl_id = second.stat("tmapi/crawl_id")
    recorded = history_of(db, crawl_id)
    assert {i: d["changes"] for i, d in recorded.items()} == expected
    for item_id, document in recorded.items():
        assert document["_id"] == f"{item_id}:{crawl_id}"
        assert before[item_id]["last_seen"] < document["at"] <= after[item_id]["last_seen"]
    # Every recorded product really moved in the catalogue; the moves not recorded are sales
    # figures of products whose listing shows none.
    catalog = Catalog(sizes={int(c): n for c, n in SIZES.items()})
    moved = catalog.changed_ids(301, 0, 1) | catalog.changed_ids(303, 0, 1)
    assert expected.keys() <= moved
    assert len(expected) > 0.1 * len(before)
    for item_id in moved - expected.keys():
        assert before[item_id]["price"] == after[item_id]["price"]
        assert before[item_id]["sales_90d"] is after[item_id]["sales_90d"] is None
    assert second.stat("tmapi/products/changed") == len(expected)
    assert db.crawl_runs.find_one({"_id": crawl_id})["counts"]["changed"] == len(expected)
    assert first.stat("tmapi/products/changed") == 0

    third = run(tmp_path, "3", fresh, mongod, mongo_db_name, *args)
    assert history_of(db, third.stat("tmapi/crawl_id")) == {}
    assert db[HISTORY].count_documents({}) == len(expected)
    assert third.stat("tmapi/products/changed") == 0


def test_products_gone_from_a_completely_crawled_category_are_marked_not_deleted(
    fresh, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    db = mongo_client[mongo_db_name]
    listed = fresh.truth(cat_id=301)["item_ids"]
    first = run(tmp_path, "1", fresh, mongod, mongo_db_name, "cat_id=301,303")
    fresh.configure(sizes={"301": 100})
    gone = set(listed) - set(fresh.truth(cat_id=301)["item_ids"])
    assert len(gone) == 20

    # A crawl that did not see the whole category cannot tell what is gone.
    partial = run(tmp_path, "2", fresh, mongod, mongo_db_name, "cat_id=301", "max_pages=2")
    filtered = run(tmp_path, "3", fresh, mongod, mongo_db_name, "cat_id=301",
                   "free_shipping=true")
    for result in (partial, filtered):
        assert result.stat("tmapi/products/vanished") == 0
        assert history_of(db, result.stat("tmapi/crawl_id")) == {}
    assert partial.stat("tmapi/coverage/incomplete/301") > 0
    assert not any(d.get("vanished") for d in products(db).values())

    complete = run(tmp_path, "4", fresh, mongod, mongo_db_name, "cat_id=301,303")
    noticed_by = complete.stat("tmapi/crawl_id")
    stored = products(db)
    assert set(listed) <= stored.keys(), "nothing is deleted"
    assert {i for i, d in stored.items() if d.get("vanished")} == gone
    for item_id in gone:
        mark = stored[item_id]["vanished"]
        assert mark.keys() == {"301"}
        assert mark["301"]["crawl_id"] == first.stat("tmapi/crawl_id")
        assert mark["301"]["noticed_by"] == noticed_by
    assert complete.stat("tmapi/products/vanished") == len(gone)
    recorded = history_of(db, noticed_by)
    assert recorded.keys() == gone
    assert all(d["changes"] == {AVAILABLE_IN: [[301], []]} for d in recorded.values())

    again = run(tmp_path, "5", fresh, mongod, mongo_db_name, "cat_id=301")
    assert again.stat("tmapi/products/vanished") == 0
    assert history_of(db, again.stat("tmapi/crawl_id")) == {}

    fresh.configure(sizes={"301": 120})
    back = run(tmp_path, "6", fresh, mongod, mongo_db_name, "cat_id=301")
    assert not any(d.get("vanished") for d in products(db).values())
    recorded = history_of(db, back.stat("tmapi/crawl_id"))
    assert recorded.keys() == gone
    assert all(d["changes"] == {AVAILABLE_IN: [[], [301]]} for d in recorded.values())


# The store, driven directly.

CATALOG = Catalog(sizes={7: 30, 9: 30}, overlap=0.0)


def sightings(cat_id: int, epoch: int, ids: set[int] | None = None) -> list[ProductItem]:
    """The category's products at a price epoch, as the spider would yield them."""
    items = []
    for position, product in enumerate(CATALOG.products(cat_id, epoch)):
        if ids is None or product.item_id in ids:
            context = QueryContext(cat_id, "en", "default", {}, 1, position)
            items.append(ProductItem.from_raw(build_item(product, "en"), context))
    return items


def also_in(cat_id: int, items: list[ProductItem]) -> list[ProductItem]:
    """The same products, seen under another category."""
    return [ProductItem.from_raw(i.raw, QueryContext(cat_id, "en", "default", {}, 1, 0))
            for i in items]


def test_a_retried_batch_does_not_duplicate_history(mongod, mongo_client, mongo_db_name) -> None:
    async def scenario() -> None:
        store = ProductStore(mongod.uri, mongo_db_name, retry_timeout=10)
        await store.open()
        try:
            first, now = sightings(7, 0), batch_now()
            await store.write_products(updates_by_id(first, "c1", now), "c1", now)
            second, now = sightings(7, 1), batch_now()
            # The history landed but the batch did not: the retry writes both again.
            await store.record_changes(updates_by_id(second, "c2", now), "c2", now)
            for _ in range(2):
                result = await store.write_products(updates_by_id(second, "c2", now), "c2", now)
                assert result.created == 0
        finally:
            await store.close()

    asyncio.run(scenario())
    new = {i.item_id: i.typed for i in sightings(7, 1)}
    expected = {}
    for item_id, old in ((i.item_id, i.typed) for i in sightings(7, 0)):
        changes = {f: [old[f], new[item_id][f]] for f in TRACKED_FIELDS
                   if old[f] != new[item_id][f]}
        if changes:
            expected[item_id] = changes
    assert expected
    assert expected.keys() <= CATALOG.changed_ids(7, 0, 1)
    documents = list(mongo_client[mongo_db_name][HISTORY].find())
    assert len(documents) == len(expected)
    assert {d["item_id"]: d["changes"] for d in documents} == expected


def test_availability_changes_across_categories_merge_into_one_document_per_crawl(
    mongod, mongo_client, mongo_db_name
) -> None:
    product = sightings(7, 0)[:1]
    item_id = product[0].item_id

    async def scenario() -> None:
        store = ProductStore(mongod.uri, mongo_db_name, retry_timeout=10)
        await store.open()
        try:
            now = batch_now()
            seen = updates_by_id(product + also_in(9, product), "c1", now)
            await store.write_products(seen, "c1", now)
            # c2 saw categories 7 and 9 whole, without the product: gone from both.
            for _ in range(2):
                await store.mark_vanished("c2", [7, 9], datetime.now(UTC))
            # c3 finds it again, in 7, then in 9, in two batches.
            for batch in (product, also_in(9, product)):
                now = batch_now()
                await store.write_products(updates_by_id(batch, "c3", now), "c3", now)
        finally:
            await store.close()

    asyncio.run(scenario())
    db = mongo_client[mongo_db_name]
    changes = {d["crawl_id"]: d["changes"] for d in db[HISTORY].find({"item_id": item_id})}
    assert changes == {
        "c2": {AVAILABLE_IN: [[7, 9], []]},
        "c3": {AVAILABLE_IN: [[], [7, 9]]},
    }
    stored = db[PRODUCTS].find_one({"_id": item_id})
    assert not stored["vanished"]
    assert stored["seen_in"] == {"7": "c3", "9": "c3"}


def ledger_page(crawl_id: str, page: int, items: list[ProductItem]) -> dict[str, Any]:
    """The ``crawl_pages`` document of a page of category 7 showing ``items``."""
    summary = PageSummary(len(items), tuple(i.item_id for i in items if i.item_id))
    return ledger_document(crawl_id, PageContext(Query(7), page), summary, 1, batch_now(),
                           planned=Query(7).key())


def listed_marked_vanished(db: Any, listed: list[int], cat_id: int) -> int:
    return db[PRODUCTS].count_documents({"_id": {"$in": listed},
                                         f"vanished.{cat_id}": {"$exists": True}})


def test_another_crawl_between_two_runs_of_a_crawl_makes_no_listed_product_look_gone(
    fresh, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    db = mongo_client[mongo_db_name]
    run(tmp_path, "0", fresh, mongod, mongo_db_name, "cat_id=301")
    fresh.configure(sizes={"301": 100})
    listed = fresh.truth(cat_id=301)["item_ids"]
    gone = set(products(db)) - set(listed)
    assert len(gone) == 20

    stopped = crawl_in_process(tmp_path / "1", "cat_id=301", base_url=fresh.url,
                               mongo_uri=mongod.uri, database=mongo_db_name,
                               settings={"MONGO_BATCH_SIZE": 50, "TMAPI_MAX_REQUESTS": 2})
    assert stopped.returncode == 1, stopped.log[-3000:]
    assert stopped.stat("finish_reason") == "tmapi_budget_exhausted"
    # Another plan of the same category, crawled whole while the first waits to be resumed.
    other = run(tmp_path, "2", fresh, mongod, mongo_db_name, "cat_id=301,303")
    assert other.stat("tmapi/products/vanished") == len(gone)
    resumed = run(tmp_path, "3", fresh, mongod, mongo_db_name, "cat_id=301")
    assert resumed.stat("tmapi/crawl_id") == stopped.stat("tmapi/crawl_id")
    assert resumed.stat("tmapi/resume/pages_held") == 2

    assert listed_marked_vanished(db, listed, 301) == 0
    assert {i for i, d in products(db).items() if d.get("vanished")} == gone
    assert resumed.stat("tmapi/products/vanished") == 0


def test_two_crawls_of_one_category_at_once_make_no_listed_product_look_gone(
    mongod, mongo_client, mongo_db_name
) -> None:
    """Each crawl's sightings interleaved with the other's, batch by batch, as two crawls at
    once write them: each marks only what is gone from the category."""
    listed, delisted = sightings(7, 0)[:24], sightings(7, 0)[24:]

    async def scenario() -> dict[str, int]:
        store = ProductStore(mongod.uri, mongo_db_name, retry_timeout=10)
        await store.open()
        try:
            now = batch_now()
            await store.write_products(updates_by_id(listed + delisted, "old", now), "old", now)
            for page, start in enumerate(range(0, len(listed), 8), start=1):
                for crawl_id in ("a", "b"):
                    batch = listed[start:start + 8]
                    now = batch_now()
                    await store.write_products(updates_by_id(batch, crawl_id, now),
                                               crawl_id, now)
                    await store.db[LEDGER].insert_one(ledger_page(crawl_id, page, batch))
            return {crawl_id: await store.mark_vanished(crawl_id, [7], datetime.now(UTC))
                    for crawl_id in ("a", "b")}
        finally:
            await store.close()

    marked = asyncio.run(scenario())
    db = mongo_client[mongo_db_name]
    assert listed_marked_vanished(db, [i.item_id for i in listed], 7) == 0
    assert marked == {"a": len(delisted), "b": 0}
    assert {d["_id"] for d in db[PRODUCTS].find({"vanished.7": {"$exists": True}})} == {
        i.item_id for i in delisted}
