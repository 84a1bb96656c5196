"""Whole crawls against a sandbox that misbehaves in every way at once: odd items (wrong types,
2^64, NUL/$/. in keys, invalid Unicode, deep nesting, huge items), gzip answers nobody asked
for, and faults whose messages are a megabyte long. Every good product is stored, every bad one
is kept in ``rejected_items``, and no call is wasted: one crawl in one process, one as a
cluster worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from math import ceil
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.crawling import PROJECT_ROOT, TOKEN
from tests.inprocess import crawl_in_process
from tests.servers import MongodProcess, RedisProcess
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.sandbox.misbehaviour import STORABLE_KINDS
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.storage.collections import CRAWL_RUNS, PRODUCTS, REJECTED

SIZES = {"601": 90, "602": 60}
LANGUAGES = ("en", "zh")
#: Every odd kind, the "huge" one at 2 MiB (twice what an item may hold) to keep this quick.
MISBEHAVIOUR = {"odd_item_rate": 0.15, "huge_item_bytes": 2 * 2**20, "compress": "gzip",
                "message_bytes": 1_000_000}


@pytest.fixture
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES, **MISBEHAVIOUR) as server:
        yield server


def expected(sandbox: SandboxProcess) -> tuple[set[int], int, int]:
    """Products a perfect crawl stores, the rejected sightings, and the pages of the crawl."""
    stored: set[int] = set()
    rejected = pages = 0
    for cat_id, size in SIZES.items():
        truth = sandbox.truth(cat_id=cat_id)
        bad = {int(i) for i, kind in truth["odd_items"].items() if kind not in STORABLE_KINDS}
        assert bad, "the sandbox should serve odd items here"
        stored |= set(truth["item_ids"]) - bad
        rejected += len(bad) * len(LANGUAGES)
        pages += ceil(size / 20) * len(LANGUAGES)
    return stored, rejected, pages


def test_a_crawl_stores_every_good_product_of_a_misbehaving_api(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path,
) -> None:
    sandbox.configure(fault_rates={417: 0.1})
    result = crawl_in_process(tmp_path, "cat_id=601,602", f"language={','.join(LANGUAGES)}",
                              base_url=sandbox.url, mongo_uri=mongod.uri,
                              database=mongo_db_name)
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("finish_reason") == "finished"
    stored, rejected, pages = expected(sandbox)
    db = mongo_client[mongo_db_name]
    assert {d["_id"] for d in db[PRODUCTS].find({}, {"_id": 1})} == stored
    assert db[REJECTED].count_documents({}) == rejected == result.stat(stats_keys.ITEMS_REJECTED)
    answers = sandbox.stats(records=False)["answers"]
    assert answers["200"] == pages == result.stat(stats_keys.PAGES)
    assert result.stat(stats_keys.PAGES_FAILED) == 0
    assert result.stat(stats_keys.answer(417)) == answers.get("417", 0) > 0
    assert max(len(line) for line in result.log.splitlines()) < 5000
    run = db[CRAWL_RUNS].find_one({"_id": result.stat(stats_keys.CRAWL_ID)})
    assert run["counts"]["rejected"] == rejected
    assert run["counts"]["products_seen"] == len(stored)


def test_a_cluster_worker_settles_pages_with_rejected_items_and_exits(  # noqa: PLR0917
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, redis_server: RedisProcess, tmp_path: Path,
) -> None:
    """A page whose items were rejected is done: its lease is acknowledged, not redelivered."""
    stats_path = tmp_path / "stats.json"
    settings: dict[str, Any] = {
        "STATS_FILE": stats_path, "LOG_LEVEL": "INFO", "TMAPI_CONCURRENCY": 4,
        "MONGO_FLUSH_INTERVAL": 0.2, "MAX_IDLE_TIME_BEFORE_CLOSE": 1,
        "TMAPI_HEARTBEAT_INTERVAL": 0.3, "TMAPI_HEARTBEAT_TTL": 2,
        "TMAPI_QUEUE_POLL_INTERVAL": 0.05, "TMAPI_REDIS_PREFIX": mongo_db_name,
    }
    command = [sys.executable, "-m", "scrapy", "crawl", "category_items",
               "-a", "cat_id=601,602", "-a", f"language={','.join(LANGUAGES)}"]
    for name, value in settings.items():
        command += ["-s", f"{name}={value}"]
    env = {**os.environ, "SCRAPY_PROJECT": "distributed", "REDIS_URL": redis_server.uri,
           "MONGO_URI": mongod.uri, "MONGO_DATABASE": mongo_db_name, "TMAPI_TOKEN": TOKEN,
           "TMAPI_BASE_URL": sandbox.url}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=240, check=False)
    log = done.stderr + done.stdout
    assert done.returncode == 0, log[-3000:]
    stats = json.loads(stats_path.read_text())
    stored, rejected, pages = expected(sandbox)
    assert sandbox.stats(records=False)["requests"] == pages
    assert stats[stats_keys.DISTRIBUTED_ACKED] == pages
    assert stats_keys.DISTRIBUTED_FAILED not in stats
    db = mongo_client[mongo_db_name]
    assert db[REJECTED].count_documents({}) == rejected
    assert {d["_id"] for d in db[PRODUCTS].find({}, {"_id": 1})} == stored
