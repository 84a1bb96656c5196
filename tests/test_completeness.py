"""A crawl's record of completeness: ``crawl_runs.complete`` and ``incomplete.<cat_id>``, the
exit status, the final line, and what vanishes.

Real crawls of the sandbox into a real mongod; the losses come from the frontier's decisions
(a part no split reaches), the pages given up on, and the crawl's stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.crawling import TOKEN, CrawlResult, crawl
from tests.inprocess import crawler_for, project_settings
from tests.servers import MongodProcess
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler.accounting import Completeness
from tmapi_crawler.commands.report import summary
from tmapi_crawler.distributed.status import completeness
from tmapi_crawler.frontier.completeness import (
    PAGES_GIVEN_UP,
    STALE_STOPPED,
    STOPPED,
    Loss,
    loss_from_dict,
    loss_to_dict,
)
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import Decision
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.catalog import PRICE_POINT_CENTS
from tmapi_crawler.sandbox.items import format_price
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.transport.middleware import NOT_SENT

POINTED = 701  # most of it at one price, more there than the reach
WHOLE = 702
POINT_CAP = 100
SIZES = {str(POINTED): 1000, str(WHOLE): 150}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], result_cap=POINT_CAP, size=SIZES,
                        price_point_share=0.6) as server:
        yield server


def run(tmp_path: Path, sandbox: SandboxProcess, mongod: MongodProcess, database: str,
        *arguments: str, **settings: Any) -> CrawlResult:
    return crawl(tmp_path, *arguments, base_url=sandbox.url, mongo_uri=mongod.uri,
                 database=database, timeout=180,
                 settings={"TMAPI_RESULT_CAP": POINT_CAP,
                           "LOG_LEVEL": "INFO", **settings})


def test_a_category_with_an_unreachable_part_is_recorded_incomplete_and_exits_3(
    sandbox, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    sandbox.reset()
    db = mongo_client[mongo_db_name]
    point = format_price(PRICE_POINT_CENTS)
    truth = set(sandbox.truth(cat_id=POINTED)["item_ids"])
    at_point = set(sandbox.truth(cat_id=POINTED, price_start=point, price_end=point)["item_ids"])
    assert len(at_point) > POINT_CAP

    result = run(tmp_path, sandbox, mongod, mongo_db_name, f"cat_id={POINTED},{WHOLE}",
                 "page_size=50")
    assert result.returncode == 3, result.log[-3000:]
    assert result.stats["finish_reason"] == "finished"
    run_record = db.crawl_runs.find_one({"_id": result.stat("tmapi/crawl_id")})
    assert run_record["complete"] is False
    assert run_record["incomplete"].keys() == {str(POINTED)}
    entry = run_record["incomplete"][str(POINTED)]
    stored = db.products.count_documents({"categories": POINTED})
    assert entry["reasons"] == ["unreachable"]
    assert entry["stored"] == stored == len(truth) - result.stat("tmapi/split/unreachable")
    assert entry["claimed"] == len(truth)  # the sandbox's total is the whole category's
    assert entry["unreached"] == result.stat("tmapi/split/unreachable") == len(truth) - stored
    assert entry["queries"]
    assert all(f"cat_id={POINTED}" in q for q in entry["queries"])
    assert "limited" not in run_record
    assert result.stat("tmapi/completeness/losses/unreachable") == len(entry["queries"])
    # The final line names it; nothing of it is marked vanished, the whole one is complete.
    final = result.log.splitlines()[-1]
    assert " finished in " in final
    assert final.endswith(f"; incomplete: categories {POINTED} (unreachable)")
    assert db.products.count_documents({"vanished": {"$exists": True}}) == 0
    assert f"Crawled completely: categories {WHOLE};" in result.log
    read = summary(db, "here").splitlines()
    assert f"  read      incomplete: categories {POINTED} (unreachable: {stored} stored of " \
        f"{len(truth)} claimed, at least {len(truth) - stored} unreached)" in read
    print(f"\nunreachable: exit {result.returncode}, complete {run_record['complete']}, "
          f"incomplete.{POINTED} {entry}, of {len(truth)} products, "
          f"{result.stat('tmapi/requests')} calls")


def test_max_pages_is_recorded_as_limited_and_never_makes_a_crawl_incomplete(
    sandbox, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    sandbox.reset()
    result = run(tmp_path, sandbox, mongod, mongo_db_name, f"cat_id={WHOLE}", "max_pages=2")
    assert result.returncode == 0, result.log[-3000:]
    record = mongo_client[mongo_db_name].crawl_runs.find_one(
        {"_id": result.stat("tmapi/crawl_id")})
    assert (record["complete"], record["incomplete"], record["limited"]) == (
        True, {}, {"max_pages": 2})
    assert "incomplete" not in result.log.splitlines()[-1]


def test_a_stopped_crawl_names_every_category_it_left_pages_of_and_exits_1(
    sandbox, mongod, mongo_client, mongo_db_name, tmp_path: Path
) -> None:
    sandbox.reset()
    result = run(tmp_path, sandbox, mongod, mongo_db_name, f"cat_id={WHOLE}",
                 TMAPI_MAX_REQUESTS=2)
    assert result.returncode == 1, result.log[-3000:]
    record = mongo_client[mongo_db_name].crawl_runs.find_one(
        {"_id": result.stat("tmapi/crawl_id")})
    assert record["complete"] is False
    assert record["incomplete"][str(WHOLE)]["reasons"] == ["stopped"]
    entry = record["incomplete"][str(WHOLE)]
    stored = mongo_client[mongo_db_name].products.count_documents({"categories": WHOLE})
    assert 0 < entry["stored"] == stored < 150
    assert (entry["claimed"], entry["unreached"]) == (150, 150 - stored)
    assert result.log.splitlines()[-1].endswith(f"; incomplete: categories {WHOLE} (stopped)")

    # Resumed to its end, it is complete: the record is the whole crawl's.
    resumed = run(tmp_path / "2", sandbox, mongod, mongo_db_name, f"cat_id={WHOLE}")
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert resumed.stat("tmapi/crawl_id") == result.stat("tmapi/crawl_id")
    record = mongo_client[mongo_db_name].crawl_runs.find_one(
        {"_id": result.stat("tmapi/crawl_id")})
    assert (record["complete"], record["incomplete"]) == (True, {})


def test_a_crawl_recorded_before_completeness_existed_shows_not_recorded(
    mongo_client, mongo_db_name
) -> None:
    db = mongo_client[mongo_db_name]
    db.crawl_runs.insert_one({"_id": "old", "started_at": datetime.now(UTC),
                              "finish_reason": "finished", "status": "closed"})
    assert "  read      not recorded" in summary(db, "here").splitlines()
    assert completeness({"id": "old", "completed_at": "1"}, "finished") == "not recorded"
    assert completeness({"id": "c", "complete": "0", "incomplete": "7 (stale_stopped)"},
                        "finished") == "incomplete: categories 7 (stale_stopped)"
    assert completeness({"id": "c"}, "running") is None


def test_the_accounting_gathers_decisions_given_up_pages_and_what_a_stop_left() -> None:
    """In-process: the losses of one process, as the recorder and a cluster worker read them."""
    async def scenario() -> list[list[Loss]]:
        crawler = crawler_for(project_settings(), cat_id="5,6")
        spider = crawler.spider
        account = Completeness.of(crawler)
        six = Query(6).key()
        for decision in (
                Decision(follow=[PageContext(Query(5)), PageContext(Query(6))]),
                Decision(done=[six], losses=[Loss(6, STALE_STOPPED, six),
                                             Loss(6, STALE_STOPPED, six, 40)])):
            crawler.signals.send_catch_log(tmapi_signals.frontier_decided, decision=decision)
        failed = spider.page_request(PageContext(Query(5), page=3))
        crawler.signals.send_catch_log(tmapi_signals.page_failed, request=failed,
                                       reason="417")
        seen = [account.losses(), account.losses("finished"), account.losses("shutdown")]
        not_sent = spider.page_request(PageContext(Query(5), page=4))
        crawler.signals.send_catch_log(tmapi_signals.page_failed, request=not_sent,
                                       reason=NOT_SENT)
        return [*seen, account.losses()]

    running, finished, stopped, kept_back = asyncio.run(scenario())
    five, six = Query(5).key(), Query(6).key()
    assert running == finished == [Loss(5, PAGES_GIVEN_UP, five), Loss(6, STALE_STOPPED, six, 40)]
    # Stopped: the query of 5 still had pages, 6 was done.
    assert stopped == [Loss(5, PAGES_GIVEN_UP, five), Loss(5, STOPPED, five),
                       Loss(6, STALE_STOPPED, six, 40)]
    assert kept_back == stopped, "a page the stop kept from being sent is the stop's"
    assert [loss_from_dict(loss_to_dict(loss)) for loss in stopped] == stopped
