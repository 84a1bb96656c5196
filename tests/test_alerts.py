"""Alerts end to end: real ``scrapy crawl`` runs of the sandbox into a real mongod, their rules
delivered by Apprise to a real local webhook (``json://``), checked against what the database
says each rule should list; sent once over a resume and a second check; and a webhook that
hangs or answers 500 leaves the crawl's record and exit status alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import AsyncMongoClient

from tests.crawling import PROJECT_ROOT, TOKEN, CrawlResult, crawl
from tests.inprocess import crawl_in_process
from tests.servers import MongodProcess
from tests.webhook import Webhook
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.alerts.evaluate import MAX_LINES
from tmapi_crawler.alerts.extension import Outcome, check_crawl
from tmapi_crawler.alerts.rules import AlertsConfig, Rule, load
from tmapi_crawler.commands.alerts import SAMPLE_TITLE
from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.storage.collections import ALERTS_SENT

CAT = 301
SIZES = {str(CAT): 60}
SHRUNK = {str(CAT): 50}
DROP, RISE = 2.5, 2.5


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES) as server:
        yield server


@pytest.fixture
def fresh(sandbox: SandboxProcess) -> SandboxProcess:
    sandbox.reset()
    sandbox.configure(price_epoch=0, sizes=SIZES, fault_rates={})
    return sandbox


def crossing_target() -> float:
    """A target price that one product's move between epochs 0 and 1 crosses down to."""
    catalog = Catalog(sizes={CAT: SIZES[str(CAT)]})
    before = {p.item_id: p.price_cents for p in catalog.products(CAT, 0)}
    after = {p.item_id: p.price_cents for p in catalog.products(CAT, 1)}
    return min(after[i] for i in before.keys() & after.keys() if after[i] < before[i]) / 100


def alerts_file(tmp_path: Path, urls: list[str], target: float) -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(
        f"notify: {json.dumps(urls)}\n"
        "rules:\n"
        f"  - {{kind: price_drop, min_pct: {DROP}}}\n"
        f"  - {{kind: price_rise, min_pct: {RISE}}}\n"
        f"  - {{kind: below, price: {target}}}\n"
        f"  - {{kind: new, cat_id: [{CAT}]}}\n"
        "  - {kind: vanished}\n"
        "  - {kind: incomplete}\n")
    return path


def run(tmp_path: Path, sandbox: SandboxProcess, mongod: MongodProcess, database: str,
        alerts: Path, **settings: object) -> CrawlResult:
    """A crawl with alerts, in-process: what it sends and records is the subject."""
    return crawl_in_process(tmp_path, f"cat_id={CAT}", base_url=sandbox.url,
                            mongo_uri=mongod.uri, database=database,
                            settings={"TMAPI_ALERTS_FILE": str(alerts), **settings})


def listed(message: dict[str, Any]) -> tuple[list[int], int]:
    """The product ids a message lists, and how many more it says there are."""
    lines = message["message"].splitlines()
    ids = [int(m[1]) for text in lines if (m := re.match(r"(\d+) · ", text))]
    more = next((int(m[1]) for text in lines if (m := re.fullmatch(r"… and (\d+) more", text))),
                0)
    return ids, more


def by_rule(messages: list[dict[str, Any]], rules: tuple[Rule, ...]) -> dict[str, list[int]]:
    """Each rule's listed products, over ``messages`` (one message per rule and crawl)."""
    found: dict[str, list[int]] = {}
    for message in messages:
        rule = next(r for r in rules if message["title"].startswith(f"tmapi: {r.describe()}:"))
        assert rule.kind not in found, "one message per rule and crawl"
        ids, more = listed(message)
        assert more == 0, "short enough to be listed whole"
        assert message["title"].endswith(f": {len(ids)} product{'s' * (len(ids) != 1)}")
        found[rule.kind] = ids
    return found


def prices(db: Any) -> dict[int, float | None]:
    return {d["_id"]: d["price"] for d in db.products.find({}, {"price": 1})}


def pct(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None or old <= 0 else (new - old) / old * 100


def expected(before: dict[int, float | None], after: dict[int, float | None], target: float,
             sandbox: SandboxProcess) -> dict[str, set[int]]:
    """What each product rule must list for the second crawl, from the prices before and after
    it and the sandbox's listing (not from ``history``, which the rules read)."""
    moves = {i: pct(before[i], after[i]) for i in after if before[i] != after[i]}
    return {
        "price_drop": {i for i, p in moves.items() if p is not None and -p >= DROP},
        "price_rise": {i for i, p in moves.items() if p is not None and p >= RISE},
        "below": {i for i in moves if after[i] is not None and after[i] <= target
                  and (before[i] is None or before[i] > target)},
        "vanished": set(before) - set(sandbox.truth(cat_id=CAT)["item_ids"]),
    }


def check_again(uri: str, database: str, crawl_id: str, config: AlertsConfig) -> Outcome:
    """The alerts of a crawl checked once more, as a second finaliser would."""

    async def check() -> Outcome:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        try:
            return await check_crawl(client[database], crawl_id, config, 5)
        finally:
            await client.close()

    return asyncio.run(check())


def test_each_rule_lists_exactly_what_the_database_says_once_over_a_resume(
    fresh: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path,
) -> None:
    db = mongo_client[mongo_db_name]
    target = crossing_target()
    with Webhook() as hook:
        path = alerts_file(tmp_path, [hook.url], target)
        rules = load(str(path)).rules

        first = run(tmp_path / "1", fresh, mongod, mongo_db_name, path)
        assert first.returncode == 0, first.log[-3000:]
        before = prices(db)
        assert len(before) == 60
        messages = hook.take()
        assert sorted(m["title"] for m in messages) == sorted([
            f"tmapi: new products (categories {CAT}): 60 products",
            f"tmapi: price at or below {target:g}: "
            f"{sum(p <= target for p in before.values())} products"])
        new = next(m for m in messages if m["title"].startswith("tmapi: new"))
        assert listed(new) == (sorted(before)[:MAX_LINES], 60 - MAX_LINES)
        below = next(m for m in messages if m["title"].startswith("tmapi: price at"))
        assert set(listed(below)[0]) == {i for i, p in before.items() if p <= target}
        assert first.stat(stats_keys.ALERTS_SENT) == 2
        assert first.stat(stats_keys.ALERTS_PRODUCTS) == 60 + len(listed(below)[0])

        # Prices move and ten products go; a budget stops the crawl after two of three pages.
        fresh.configure(price_epoch=1, sizes=SHRUNK)
        stopped = run(tmp_path / "2", fresh, mongod, mongo_db_name, path, TMAPI_MAX_REQUESTS=2)
        assert stopped.returncode == 1
        assert stopped.stat("finish_reason") == "tmapi_budget_exhausted"
        crawl_id = stopped.stat(stats_keys.CRAWL_ID)
        part = hook.take()
        resumed = run(tmp_path / "3", fresh, mongod, mongo_db_name, path)
        assert resumed.returncode == 0, resumed.log[-3000:]
        assert resumed.stat(stats_keys.CRAWL_ID) == crawl_id
        rest = hook.take()

        incomplete = [m for m in part if m["title"].startswith("tmapi: crawl incomplete")]
        assert [m["message"].splitlines()[0] for m in incomplete] == [
            "stopped: tmapi_budget_exhausted"]
        first_part = by_rule([m for m in part if m not in incomplete], rules)
        second_part = by_rule(rest, rules)
        wanted_by_rule = expected(before, prices(db), target, fresh)
        assert all(wanted_by_rule.values()), wanted_by_rule
        assert len(wanted_by_rule["vanished"]) == 10
        assert {d["_id"] for d in db.products.find({f"vanished.{CAT}.noticed_by": crawl_id})} \
            == wanted_by_rule["vanished"]
        for kind, wanted in wanted_by_rule.items():
            sent = first_part.get(kind, []) + second_part.get(kind, [])
            assert len(sent) == len(set(sent)), f"{kind}: a product sent twice"
            assert set(sent) == wanted, kind
        assert "new" not in first_part | second_part
        assert db.crawl_runs.find_one({"_id": crawl_id})["alerts"] == {
            "sent": len(part) + len(rest), "failed": 0}

        # A second finaliser (or any later check of the same crawl) sends nothing more.
        outcome = check_again(mongod.uri, mongo_db_name, crawl_id,
                              AlertsConfig((hook.url,), rules))
        assert (outcome.sent, outcome.failed) == (0, 0)
        # Every product change again, found sent; the stop is gone now the crawl finished.
        assert outcome.already_sent == sum(map(len, wanted_by_rule.values()))
        assert hook.take() == []
        assert hook.requests == 2 + len(part) + len(rest)
        # Plus the stopped run's gaps, kept once each: the stop, and its category's record.
        gaps = [line for line in incomplete[0]["message"].splitlines()
                if not line.startswith("crawl ")]
        assert len(gaps) == 2, gaps
        assert gaps[1].startswith(f"category {CAT}: stopped; "), gaps
        assert db[ALERTS_SENT].count_documents({"crawl_id": crawl_id}) == \
            outcome.already_sent + len(gaps)


@pytest.mark.parametrize("mode", ["hang", "fail"])
def test_a_dead_or_hanging_service_changes_nothing_of_the_crawl(  # noqa: PLR0917
    fresh: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path, mode: str,
) -> None:
    db = mongo_client[mongo_db_name]
    with Webhook(mode) as broken, Webhook() as working:
        path = alerts_file(tmp_path, [broken.url, working.url], crossing_target())
        # A real `scrapy crawl`: its exit status is what must not change.
        result = crawl(tmp_path / "1", f"cat_id={CAT}", base_url=fresh.url,
                       mongo_uri=mongod.uri, database=mongo_db_name,
                       settings={"TMAPI_ALERTS_FILE": str(path), "TMAPI_ALERTS_TIMEOUT": 1})
        assert result.returncode == 0, result.log[-3000:]
        assert broken.arrived.is_set(), "delivery was tried"
        assert len(working.titles()) == 2, "the working service got its messages"
    assert result.stat("finish_reason") == "finished"
    assert result.stat(stats_keys.ALERTS_FAILED) == 2
    assert result.stat(stats_keys.ALERTS_SENT) == 2
    crawl_id = result.stat(stats_keys.CRAWL_ID)
    record = db.crawl_runs.find_one({"_id": crawl_id})
    assert record["status"] == "closed"
    assert record["finish_reason"] == "finished"
    assert record["counts"]["new"] == 60
    assert record["alerts"] == {"sent": 2, "failed": 2}
    if mode == "fail":
        assert broken.requests == 2 * 3, "each message tried three times"
    # What failed is not recorded as sent: the next check of the crawl tries it again.
    assert {d["service"] for d in db[ALERTS_SENT].find()} == {"json"}
    assert db[ALERTS_SENT].count_documents({}) == 60 + len(
        [p for p in prices(db).values() if p <= crossing_target()])
    assert "not delivered within 1 s" in result.log
    # The URLs' secrets are nowhere: not in the log, the stats, nor any collection.
    stored = json.dumps([list(db[name].find()) for name in db.list_collection_names()],
                        default=str)
    for secret in (broken.secret, working.secret):
        assert secret not in result.log
        assert secret not in json.dumps(result.stats)
        assert secret not in stored


def test_alerts_test_says_which_services_worked_without_their_secrets(tmp_path: Path) -> None:
    with Webhook() as working, Webhook("fail") as failing:
        path = tmp_path / "alerts.yaml"
        path.write_text(f"notify: {json.dumps([working.url, failing.url])}\n"
                        "rules: [{kind: new}]\n")
        done = subprocess.run(
            [sys.executable, "-m", "scrapy", "alerts", "test", "-s", f"TMAPI_ALERTS_FILE={path}",
             "-s", "TMAPI_ALERTS_TIMEOUT=2"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 1, done.stderr
        assert done.stdout.splitlines() == [
            "1. json: ok", "2. json: FAILED (not delivered within 2 s)"]
        assert working.titles() == [SAMPLE_TITLE]
        assert failing.requests == 3
        for secret in (working.secret, failing.secret):
            assert secret not in done.stdout + done.stderr


def test_incomplete_sends_the_completeness_record_of_the_crawl(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str
) -> None:
    """A ``crawl_runs`` document as the crawl's completeness record writes it."""
    db = mongo_client[mongo_db_name]
    db.crawl_runs.insert_many([
        {"_id": "c-partial", "finish_reason": "finished", "complete": False, "incomplete": {
            "301": {"reasons": ["pages_failed"], "stored": 80, "claimed": 100, "unreached": 20,
                    "queries": ["301:en:default"]},
            "302": {"reasons": ["result_cap"], "stored": 2000, "claimed": 2400,
                    "unreached": 400, "queries": ["302:en:default"]}}},
        {"_id": "c-whole", "finish_reason": "finished", "complete": True, "incomplete": {}},
    ])
    rules = (Rule("incomplete", cat_id=frozenset({302})),)
    with Webhook() as hook:
        config = AlertsConfig((hook.url,), rules)
        whole = check_again(mongod.uri, mongo_db_name, "c-whole", config)
        partial = check_again(mongod.uri, mongo_db_name, "c-partial", config)
        again = check_again(mongod.uri, mongo_db_name, "c-partial", config)
        assert [(m["title"], m["message"]) for m in hook.take()] == [(
            "tmapi: crawl incomplete (categories 302): 1 problem",
            "category 302: result_cap; 2000 of 2400 products stored; 400 unreached\n"
            "crawl c-partial")]
    assert (whole.sent, partial.sent, again.sent, again.already_sent) == (0, 1, 0, 1)
