"""Resuming without paying twice: real ``scrapy crawl`` runs against the sandbox and MongoDB.

A crawl interrupted by the budget, a 439 or a SIGKILL is continued by the same command, under
the same crawl id, paying for no page already stored (at most the pages in flight or parsed
but not yet written at the kill); the products stored equal the sandbox's truth.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from tests.crawling import PROJECT_ROOT, TOKEN, CrawlResult, crawl, records
from tests.servers import MongodProcess
from tests.test_progress import matches_stats, read_lines
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.commands.crawl import summary_line
from tmapi_crawler.sandbox.process import SandboxProcess

SIZES = {"101": 95, "102": 40}
ARGUMENTS = ("cat_id=101,102", "language=en,ru")
CONCURRENCY = 2
#: Pages of 20 products, in both languages.
PAGES = 2 * (5 + 2)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES, latency=0.005) as server:
        yield server


@pytest.fixture
def fresh(sandbox: SandboxProcess) -> SandboxProcess:
    sandbox.reset()
    sandbox.configure(quota=0, latency=0.005, fault_rates={})
    return sandbox


def run(tmp_path: Path, sandbox: SandboxProcess, mongod: MongodProcess, database: str,
        *extra: str, **settings: object) -> CrawlResult:
    return crawl(tmp_path, *ARGUMENTS, *extra, base_url=sandbox.url, mongo_uri=mongod.uri,
                 database=database,
                 settings={"TMAPI_CONCURRENCY": CONCURRENCY, **settings})


def truth(sandbox: SandboxProcess) -> set[int]:
    return {i for cat in SIZES for i in sandbox.truth(cat_id=int(cat))["item_ids"]}


def stored(client: pymongo.MongoClient, database: str) -> set[int]:
    return {d["_id"] for d in client[database]["products"].find({}, {"_id": 1})}


def twice(sandbox: SandboxProcess) -> int:
    """Pages the server billed more than once, across every run since the reset."""
    return sum(n - 1 for n in Counter(records(sandbox.stats())).values() if n > 1)


@pytest.mark.parametrize("interruption", ["budget", "quota"])
def test_a_stopped_crawl_resumes_without_paying_twice(  # noqa: PLR0917
    fresh: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path, interruption: str,
) -> None:
    if interruption == "budget":
        first = run(tmp_path / "1", fresh, mongod, mongo_db_name, TMAPI_MAX_REQUESTS=7)
        reason = "tmapi_budget_exhausted"
        assert fresh.stats()["requests"] == 7
    else:
        fresh.configure(quota=7)
        first = run(tmp_path / "1", fresh, mongod, mongo_db_name)
        reason = "tmapi_quota_exhausted"
    assert first.returncode == 1, first.log[-3000:]
    assert first.stat("finish_reason") == reason
    fresh.configure(quota=0)
    second = run(tmp_path / "2", fresh, mongod, mongo_db_name)
    assert second.returncode == 0, second.log[-3000:]
    assert second.stat("finish_reason") == "finished"
    assert second.stat(stats_keys.CRAWL_ID) == first.stat(stats_keys.CRAWL_ID)
    held = second.stat(stats_keys.RESUME_PAGES_HELD)
    assert held >= 5
    assert "pages already held" in second.log
    assert twice(fresh) == 0
    assert stored(mongo_client, mongo_db_name) == truth(fresh)
    runs = list(mongo_client[mongo_db_name]["crawl_runs"].find())
    assert len(runs) == 1
    assert runs[0]["finish_reason"] == "finished"
    assert len(runs[0]["resumes"]) == 1
    assert runs[0]["resumes"][0]["pages_held"] == held
    # What it cost, over both runs: every call the server saw, by what it bought.
    cost = runs[0]["cost"]
    assert cost["calls"] == fresh.stats()["requests"]
    assert cost["calls"] == sum(cost.get(k, 0) for k in ("pages", "retries", "splits",
                                                         "failures"))
    assert sum(cost["by_category"].values()) == cost["calls"]
    assert second.stat(stats_keys.RESUME_CALLS_SAVED) == held
    assert f"a resume saved {held}" in second.log
    # The figures add up: what was left is what was fetched, the last progress line says all
    # the crawl's pages, and the run record counts both runs, each one's share under resumes.
    fetched = second.stat(stats_keys.PAGES) + second.stat(stats_keys.PAGES_FAILED)
    assert f"{fetched} pages left to fetch as far as is known" in second.log
    assert "found on the way" not in second.log
    last = read_lines(second.log)[-1]
    matches_stats(last, second.stats)
    assert int(last["pages_done"]) == int(last["pages_known"]) == held + fetched
    assert runs[0]["counts"]["pages"] == first.stat(stats_keys.PAGES) + second.stat(
        stats_keys.PAGES) == cost["pages"]
    assert runs[0]["resumes"][0]["counts"]["pages"] == second.stat(stats_keys.PAGES)
    # Finished now: the same command starts a new crawl, which pays for everything again.
    third = run(tmp_path / "3", fresh, mongod, mongo_db_name, "fresh=false")
    assert third.stat(stats_keys.CRAWL_ID) != first.stat(stats_keys.CRAWL_ID)
    assert third.stat(stats_keys.RESUME_PAGES_HELD) == 0


def test_a_crawl_run_several_times_counts_the_whole_crawl_and_each_saving_once(
    fresh: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path,
) -> None:
    runs = [run(tmp_path / str(n), fresh, mongod, mongo_db_name, TMAPI_MAX_REQUESTS=4)
            for n in range(3)]
    runs.append(run(tmp_path / "3", fresh, mongod, mongo_db_name))
    assert [r.stat("finish_reason") for r in runs] == [
        *["tmapi_budget_exhausted"] * 3, "finished"]
    record = mongo_client[mongo_db_name]["crawl_runs"].find_one()
    paid = fresh.stats()["requests"]
    assert record["cost"]["calls"] == paid == PAGES
    # Each replayed page is saved once: the last resume replayed every page held before it.
    assert record["cost"]["saved_by_resume"] == runs[-1].stat(stats_keys.RESUME_CALLS_SAVED)
    assert record["cost"]["saved_by_resume"] < paid
    pages = [r.stat(stats_keys.PAGES) for r in runs]
    assert record["counts"]["pages"] == sum(pages) == PAGES
    assert [r["counts"]["pages"] for r in record["resumes"]] == pages[1:]
    assert record["counts"]["items"] == sum(r.stat(stats_keys.ITEMS) for r in runs)
    # Sightings beside products, both of the whole crawl: never fewer sightings than products.
    sightings, seen = record["counts"]["items"], record["counts"]["products_seen"]
    assert sightings >= seen == len(truth(fresh))
    assert runs[-1].stat(stats_keys.ITEMS) < seen, "the last run alone saw fewer"
    assert f"{sightings} sightings of {seen} products" in summary_line(runs[-1].stats, None)


def test_fresh_true_starts_a_new_crawl_of_an_interrupted_plan(
    fresh: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path,
) -> None:
    first = run(tmp_path / "1", fresh, mongod, mongo_db_name, TMAPI_MAX_REQUESTS=3)
    assert first.stat("finish_reason") == "tmapi_budget_exhausted"
    second = run(tmp_path / "2", fresh, mongod, mongo_db_name, "fresh=true")
    assert second.stat("finish_reason") == "finished"
    assert second.stat(stats_keys.CRAWL_ID) != first.stat(stats_keys.CRAWL_ID)
    assert second.stat(stats_keys.RESUME_PAGES_HELD) == 0
    assert stored(mongo_client, mongo_db_name) == truth(fresh)


def test_a_bad_fresh_argument_is_refused(fresh: SandboxProcess, mongod: MongodProcess,
                                         mongo_db_name: str, tmp_path: Path) -> None:
    result = run(tmp_path, fresh, mongod, mongo_db_name, "fresh=maybe")
    assert result.returncode == 2
    assert "fresh: 'maybe' is not true or false" in result.log
    assert fresh.stats()["requests"] == 0


def test_a_killed_crawl_resumes_paying_twice_at_most_the_pages_in_flight(
    fresh: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path,
) -> None:
    fresh.configure(latency=0.3)
    command = [sys.executable, "-m", "scrapy", "crawl", "category_items"]
    for argument in ARGUMENTS:
        command += ["-a", argument]
    for name, value in {"TMAPI_CONCURRENCY": CONCURRENCY, "MONGO_FLUSH_INTERVAL": 0.2,
                        "LOG_LEVEL": "INFO"}.items():
        command += ["-s", f"{name}={value}"]
    environment = {**os.environ, "TMAPI_TOKEN": TOKEN, "TMAPI_BASE_URL": fresh.url,
                   "MONGO_URI": mongod.uri, "MONGO_DATABASE": mongo_db_name}
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # Mid-crawl: some pages are in the ledger (so stored), many are still to come.
        while mongo_client[mongo_db_name]["crawl_pages"].count_documents({}) < 6:
            assert process.poll() is None, "the crawl ended before it could be killed"
            assert time.monotonic() < deadline, "no page reached the ledger"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    paid_before = fresh.stats()["requests"]
    assert paid_before < PAGES
    second = run(tmp_path, fresh, mongod, mongo_db_name, MONGO_FLUSH_INTERVAL=0.2)
    assert second.stat("finish_reason") == "finished", second.log[-3000:]
    assert second.stat(stats_keys.RESUME_PAGES_HELD) >= 6
    assert twice(fresh) <= CONCURRENCY
    assert stored(mongo_client, mongo_db_name) == truth(fresh)
    run_document = mongo_client[mongo_db_name]["crawl_runs"].find_one()
    assert run_document["_id"] == second.stat(stats_keys.CRAWL_ID)
    assert run_document["status"] == "closed"
