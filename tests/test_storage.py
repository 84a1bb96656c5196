"""Crawls into a real mongod: documents, merging, re-crawls, failures of the database.

Crawls run in-process (``tests/inprocess.py``), but where the process itself is the subject:
its exit status, a mongod killed under it, the embedded mongod it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pymongo
import pytest

from tests.crawling import PROJECT_ROOT, TOKEN, crawl
from tests.inprocess import crawl_in_process
from tests.servers import MongodProcess
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.servers import free_port
from tmapi_crawler.storage import embedded as embedded_mongo
from tmapi_crawler.storage.collections import CRAWL_RUNS, PRODUCTS, REJECTED

SIZES = {"201": 120, "202": 90}
TYPED = {
    "price": float, "sale_price": float, "origin_price": float, "moq": int,
    "quantity_begin": int, "shop_years": int, "sales_90d": int, "repurchase_rate": float,
    "composite_score": float, "free_shipping": bool, "ship_in_48h": bool,
    "is_super_factory": bool, "is_powerful_seller": bool,
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES, overlap=0.2) as server:
        yield server


@pytest.fixture(scope="module")
def malformed() -> Iterator[SandboxProcess]:
    """A sandbox whose catalogue has items without an id or with a price like "abc"."""
    with SandboxProcess(token=[TOKEN], size=SIZES, malformed_rate=0.1) as server:
        yield server


@pytest.fixture
def fresh(sandbox: SandboxProcess) -> SandboxProcess:
    sandbox.reset()
    sandbox.configure(price_epoch=0, latency=0.0, fault_rates={})
    return sandbox


def truth(sandbox, cat_id: int) -> set[int]:
    return set(sandbox.truth(cat_id=cat_id)["item_ids"])


def test_one_typed_document_per_product_merged_across_categories_and_languages(
    fresh, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    result = crawl_in_process(tmp_path, "cat_id=201,202", "language=en,zh,ru",
                              "sort=default,sales", base_url=fresh.url, mongo_uri=mongod.uri,
                              database=mongo_db_name)
    assert result.returncode == 0, result.log[-3000:]
    db = mongo_client[mongo_db_name]
    first, second = truth(fresh, 201), truth(fresh, 202)
    assert first & second, "the sandbox should share products between neighbours"
    docs = {d["_id"]: d for d in db[PRODUCTS].find()}
    assert set(docs) == first | second
    for item_id, doc in docs.items():
        expected = {c for c, ids in ((201, first), (202, second)) if item_id in ids}
        assert set(doc["categories"]) == expected
        assert set(doc["titles"]) == {"en", "zh", "ru"}
        assert set(doc["raw"]) == {"en", "zh", "ru"}
        assert doc["titles"]["en"] != doc["titles"]["zh"]
        assert doc["first_seen"] <= doc["last_seen"]
        for field, kind in TYPED.items():
            assert doc[field] is None or type(doc[field]) is kind, (field, doc[field])
    assert any(d["sales_90d"] is not None for d in docs.values())
    assert result.stat("tmapi/products/new") == len(docs)
    assert result.stat("tmapi/db/sightings") == result.stat("tmapi/items")


def test_typed_fields_match_the_originals(fresh, mongod, mongo_client, mongo_db_name,
                                          tmp_path: Path) -> None:
    result = crawl_in_process(tmp_path, "cat_id=201", base_url=fresh.url, mongo_uri=mongod.uri,
                              database=mongo_db_name)
    assert result.returncode == 0, result.log[-3000:]
    for doc in mongo_client[mongo_db_name][PRODUCTS].find():
        raw = doc["raw"]["en"]
        assert doc["price"] == (float(raw["price"]) if raw.get("price") else None)
        sales = (raw.get("sale_info") or {}).get("sale_quantity_90days")
        if sales and sales.endswith("+") and sales[:-1].isdigit():
            assert doc["sales_90d"] == int(sales[:-1])
            assert doc["sales_90d_is_lower_bound"] is True
        rate = raw.get("item_repurchase_rate")
        if rate:
            assert doc["repurchase_rate"] == pytest.approx(float(rate.rstrip("%")) / 100)


def test_recrawl_keeps_first_seen_and_updates_what_changed(
    fresh, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    first = crawl_in_process(tmp_path / "1", "cat_id=201", base_url=fresh.url,
                             mongo_uri=mongod.uri, database=mongo_db_name)
    assert first.returncode == 0, first.log[-3000:]
    db = mongo_client[mongo_db_name]
    before = {d["_id"]: d for d in db[PRODUCTS].find()}
    fresh.configure(price_epoch=1)
    second = crawl_in_process(tmp_path / "2", "cat_id=201", base_url=fresh.url,
                              mongo_uri=mongod.uri, database=mongo_db_name)
    assert second.returncode == 0, second.log[-3000:]
    after = {d["_id"]: d for d in db[PRODUCTS].find()}
    assert set(after) == set(before)
    changed = [i for i in after if after[i]["raw"]["en"] != before[i]["raw"]["en"]]
    assert changed, "price_epoch=1 should move some prices"
    for item_id, doc in after.items():
        assert doc["first_seen"] == before[item_id]["first_seen"]
        assert doc["last_seen"] > before[item_id]["last_seen"]
        assert doc["first_crawl_id"] == first.stat("tmapi/crawl_id")
        assert doc["last_crawl_id"] == second.stat("tmapi/crawl_id")
        raw = doc["raw"]["en"]
        assert doc["price"] == (float(raw["price"]) if raw.get("price") else None)
    runs = {r["_id"]: r for r in db[CRAWL_RUNS].find()}
    assert runs[second.stat("tmapi/crawl_id")]["counts"]["new"] == 0
    assert runs[second.stat("tmapi/crawl_id")]["counts"]["updated"] == len(after)
    assert runs[first.stat("tmapi/crawl_id")]["counts"]["new"] == len(after)


def test_the_run_is_recorded_and_the_token_is_in_no_collection(
    malformed, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    malformed.configure(fault_rates={417: 0.1})
    result = crawl_in_process(tmp_path, "cat_id=201", "language=en,ja", base_url=malformed.url,
                              mongo_uri=mongod.uri, database=mongo_db_name)
    assert result.returncode == 0, result.log[-3000:]
    db = mongo_client[mongo_db_name]
    run = db[CRAWL_RUNS].find_one({"_id": result.stat("tmapi/crawl_id")})
    assert run["arguments"] == {"cat_id": "201", "language": "en,ja"}
    assert run["finish_reason"] == "finished"
    assert isinstance(run["started_at"], datetime)
    assert run["counts"]["pages"] == result.stat("tmapi/pages")
    assert run["counts"]["rejected"] == result.stat("tmapi/items/rejected") > 0
    assert run["answers"]["200"] == result.stat("tmapi/answers/200")
    for name in db.list_collection_names():
        for doc in db[name].find():
            assert TOKEN not in json.dumps(doc, default=str), name


def test_malformed_items_are_kept_counted_and_logged(
    malformed, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    fresh = malformed
    fresh.configure(fault_rates={})
    result = crawl_in_process(tmp_path, "cat_id=201,202", base_url=fresh.url,
                              mongo_uri=mongod.uri, database=mongo_db_name)
    assert result.returncode == 0, result.log[-3000:]
    db = mongo_client[mongo_db_name]
    rejected = list(db[REJECTED].find())
    expected = sum(len(fresh.truth(cat_id=c)["malformed_item_ids"])
                   + fresh.truth(cat_id=c)["missing_item_id"] for c in (201, 202))
    assert len(rejected) == expected == result.stat("tmapi/items/rejected") > 0
    for doc in rejected:
        assert doc["reason"]
        assert doc["context"]["cat_id"] in (201, 202)
        assert doc["raw"]
    warnings = [line for line in result.log.splitlines() if "Rejected item" in line]
    assert len(warnings) == len(rejected)
    stored = db[PRODUCTS].count_documents({})
    good = (truth(fresh, 201) | truth(fresh, 202))
    assert stored == len(good - {d["item_id"] for d in rejected if d["item_id"]})


def test_unreachable_mongodb_stops_before_any_request(fresh, tmp_path: Path) -> None:
    result = crawl(tmp_path, "cat_id=201", base_url=fresh.url,
                   mongo_uri=f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=500")
    assert result.returncode == 1
    assert result.stat("finish_reason") == "mongodb_unavailable"
    assert fresh.stats()["requests"] == 0
    assert "MongoDB not reachable" in result.log


def test_mongodb_restarting_mid_crawl_loses_nothing(fresh, tmp_path: Path) -> None:
    fresh.configure(latency=0.02)
    with MongodProcess(tmp_path / "db") as server:
        command = [sys.executable, "-m", "scrapy", "crawl", "category_items",
                   "-a", "cat_id=201,202", "-a", "language=en,ru,zh,ja", "-a", "page_size=5",
                   "-s", "MONGO_FLUSH_INTERVAL=0.1", "-s", "MONGO_BATCH_SIZE=20",
                   "-s", f"STATS_FILE={tmp_path / 'stats.json'}", "-s", "TMAPI_CONCURRENCY=2"]
        env = {**os.environ, "TMAPI_TOKEN": TOKEN, "TMAPI_BASE_URL": fresh.url,
               "MONGO_URI": server.uri, "MONGO_DATABASE": "restart"}
        client: pymongo.MongoClient = pymongo.MongoClient(server.uri)
        with subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE,
                              text=True) as process:
            deadline = time.monotonic() + 60
            while (before := client.restart[PRODUCTS].count_documents({})) < 20:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.close()
            assert process.poll() is None, "the crawl ended before MongoDB was killed"
            server.kill()
            server.start()
            _, log = process.communicate(timeout=240)
        assert process.returncode == 0, log[-3000:]
        client = pymongo.MongoClient(server.uri)
        stored = {d["_id"]: d for d in client.restart[PRODUCTS].find()}
        assert len(stored) > before
        assert set(stored) == truth(fresh, 201) | truth(fresh, 202)
        assert all(set(d["titles"]) == {"en", "ru", "zh", "ja"} for d in stored.values())
        client.close()


def test_without_mongo_uri_the_embedded_mongodb_is_used(fresh, tmp_path: Path) -> None:
    result = crawl(tmp_path, "cat_id=202", base_url=fresh.url, mongo_uri="",
                   database="embedded")
    assert result.returncode == 0, result.log[-3000:]
    data_dir = tmp_path / "embedded-mongodb"
    server = embedded_mongo.running(data_dir)
    assert server is not None, "the embedded mongod stays up for queries and the next crawl"
    try:
        with pymongo.MongoClient(server.uri) as client:
            assert client.embedded[PRODUCTS].count_documents({}) == len(truth(fresh, 202))
    finally:
        embedded_mongo.stop(data_dir)
