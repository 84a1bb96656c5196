"""``scrapy estimate``: the calls a crawl will probably take, from earlier crawls, for free,
or from page 1 of each planned query (``--probe``), paid once and reused by the crawl."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from tests.crawling import TOKEN, records
from tests.inprocess import crawl_in_process
from tests.servers import MongodProcess
from tests.test_commands import scrapy
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier.decisions import FrontierSettings
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.spend.estimate import Figure, from_probe

SIZES = {"801": 130, "802": 45}
ARGUMENTS = ("cat_id=801,802", "language=en,ru")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES, latency=0.005) as server:
        yield server


def estimate(mongod: MongodProcess, database: str, *arguments: str, **env: str
             ) -> tuple[int, str]:
    args = [a for argument in arguments for a in ("-a", argument)]
    if arguments and arguments[-1] == "--probe":
        args = [*args[:-2], "--probe"]
    done = scrapy("estimate", "category_items", *args, MONGO_URI=mongod.uri,
                  MONGO_DATABASE=database, **env)
    return done.returncode, done.stdout + done.stderr


def total(out: str) -> tuple[int, int]:
    match = re.search(r"Total: (\d+) calls for (\d+) of \d+ queries", out)
    assert match, out
    return int(match[1]), int(match[2])


def test_bad_arguments_are_refused(mongod: MongodProcess, mongo_db_name: str) -> None:
    code, out = estimate(mongod, mongo_db_name, "cat_id=12a")
    assert code == 2
    assert "cat_id: '12a' is not an integer" in out


def test_the_estimate_from_history_matches_the_next_crawl(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str, tmp_path: Path
) -> None:
    code, out = estimate(mongod, mongo_db_name, *ARGUMENTS)
    assert code == 0, out
    assert total(out) == (0, 0)
    assert out.count("unknown (no finished crawl had it)") == 4
    sandbox.reset()
    first = crawl_in_process(tmp_path / "1", *ARGUMENTS, base_url=sandbox.url, mongo_uri=mongod.uri,
                             database=mongo_db_name, settings={"TMAPI_CONCURRENCY": 2})
    assert first.stat("finish_reason") == "finished"
    code, out = estimate(mongod, mongo_db_name, *ARGUMENTS)
    calls, known = total(out)
    assert known == 4
    assert calls == sandbox.stats()["requests"]  # every call of the crawl, retries included
    assert re.search(r"cat_id=801\S* +\d+ calls \(crawl \S+, (just now|\d+ min old)\)", out), out
    # A query never crawled is unknown, not guessed.
    code, out = estimate(mongod, mongo_db_name, "cat_id=801,803")
    assert "cat_id=803" in out
    assert out.count("unknown (no finished crawl had it)") == 1
    sandbox.reset()
    again = crawl_in_process(tmp_path / "2", *ARGUMENTS, "fresh=true", base_url=sandbox.url,
                             mongo_uri=mongod.uri, database=mongo_db_name,
                             settings={"TMAPI_CONCURRENCY": 2})
    assert again.stat("finish_reason") == "finished"
    paid = sandbox.stats()["requests"]
    assert abs(paid - calls) <= 0.05 * paid, (paid, calls)


def test_a_pending_resume_is_shown_with_the_calls_still_to_pay(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str, tmp_path: Path
) -> None:
    sandbox.reset()
    whole = crawl_in_process(tmp_path / "1", *ARGUMENTS, base_url=sandbox.url, mongo_uri=mongod.uri,
                             database=mongo_db_name)
    assert whole.stat("finish_reason") == "finished"
    ideal = sandbox.stats()["requests"]
    code, out = estimate(mongod, mongo_db_name, *ARGUMENTS, TMAPI_BASE_URL=sandbox.url)
    assert "Pending" not in out
    sandbox.reset()
    stopped = crawl_in_process(tmp_path / "2", *ARGUMENTS, "fresh=true", base_url=sandbox.url,
                               mongo_uri=mongod.uri, database=mongo_db_name,
                               settings={"TMAPI_MAX_REQUESTS": 5})
    assert stopped.stat("finish_reason") == "tmapi_budget_exhausted"
    code, out = estimate(mongod, mongo_db_name, *ARGUMENTS, TMAPI_BASE_URL=sandbox.url)
    assert code == 0, out
    assert total(out) == (ideal, 4)
    crawl_id = stopped.stat(stats_keys.CRAWL_ID)
    match = re.search(rf"Pending: crawl {crawl_id} \(tmapi_budget_exhausted\) holds (\d+) "
                      r"pages, 5 calls paid; the next crawl with these arguments resumes it: "
                      r"(\d+) calls still to pay for the known queries", out)
    assert match, out
    assert (int(match[1]), int(match[2])) == (5, ideal - 5)
    # With fresh=true nothing is resumed, and nothing pending is shown.
    code, out = estimate(mongod, mongo_db_name, *ARGUMENTS, "fresh=true",
                         TMAPI_BASE_URL=sandbox.url)
    assert "Pending" not in out
    sandbox.reset()
    resumed = crawl_in_process(tmp_path / "3", *ARGUMENTS, base_url=sandbox.url,
                               mongo_uri=mongod.uri, database=mongo_db_name)
    assert resumed.stat(stats_keys.CRAWL_ID) == crawl_id
    assert sandbox.stats()["requests"] == int(match[2])


# --probe: page 1 of each planned query, paid once.


def probe(sandbox: SandboxProcess, mongod: MongodProcess, database: str, *arguments: str,
          **env: str) -> tuple[int, str]:
    return estimate(mongod, database, *arguments, "--probe", TMAPI_TOKEN=TOKEN,
                    TMAPI_BASE_URL=sandbox.url, **env)


def test_a_probe_without_a_token_is_refused_before_any_call(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str
) -> None:
    sandbox.reset()
    code, out = estimate(mongod, mongo_db_name, *ARGUMENTS, "--probe",
                         TMAPI_BASE_URL=sandbox.url)
    assert code == 2
    assert len(out.strip().splitlines()) == 1, out
    assert "TMAPI_TOKEN" in out
    assert sandbox.stats()["requests"] == 0


def test_a_probe_is_paid_once_and_reused_by_the_crawl_that_follows(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path,
) -> None:
    # What a crawl without a probe pays, in a database of its own.
    sandbox.reset()
    unprobed = crawl_in_process(tmp_path / "1", *ARGUMENTS, base_url=sandbox.url,
                                mongo_uri=mongod.uri, database=f"{mongo_db_name}_u",
                                settings={"TMAPI_CONCURRENCY": 2})
    mongo_client.drop_database(f"{mongo_db_name}_u")
    assert unprobed.stat("finish_reason") == "finished"
    ideal = sandbox.stats()["requests"]
    queries = 4

    sandbox.reset()
    code, out = probe(sandbox, mongod, mongo_db_name, *ARGUMENTS)
    assert code == 0, out
    assert f"Probe: {queries} paid API calls now" in out
    assert sandbox.stats()["requests"] == queries
    assert sorted(page for *_, page in records(sandbox.stats())) == [1] * queries
    # Every query is under the reach: its page 1 tells its pages exactly.
    assert "at least" not in out
    assert total(out) == (ideal, queries)
    assert f"{queries} of them paid already" in out
    run = mongo_client[mongo_db_name]["crawl_runs"].find_one()
    assert run["finish_reason"] == "tmapi_probed"
    assert run["cost"]["probes"] == run["cost"]["calls"] == queries
    assert "scripts/scrapy crawl category_items -a cat_id=801,802 -a language=en,ru" in out

    # The crawl with the same arguments resumes the probe: no page 1 is paid again.
    sandbox.reset()
    after = crawl_in_process(tmp_path / "2", *ARGUMENTS, base_url=sandbox.url, mongo_uri=mongod.uri,
                             database=mongo_db_name, settings={"TMAPI_CONCURRENCY": 2})
    assert after.stat("finish_reason") == "finished", after.log[-3000:]
    assert after.stat(stats_keys.CRAWL_ID) == run["_id"]
    assert after.stat(stats_keys.RESUME_PAGES_HELD) == queries
    paid = sandbox.stats()["requests"]
    assert paid + queries == ideal
    assert 1 not in {page for *_, page in records(sandbox.stats())}
    products = {d["_id"] for d in mongo_client[mongo_db_name]["products"].find({}, {"_id": 1})}
    assert products == {i for cat in SIZES for i in sandbox.truth(cat_id=int(cat))["item_ids"]}
    run = mongo_client[mongo_db_name]["crawl_runs"].find_one()
    assert run["finish_reason"] == "finished"
    assert run["cost"]["calls"] == ideal
    assert run["cost"]["probes"] == queries
    assert run["cost"]["pages"] == ideal - queries
    # The free estimate from this crawl counts the probe's calls too: the whole cost.
    code, out = estimate(mongod, mongo_db_name, *ARGUMENTS)
    assert total(out) == (ideal, queries)


def test_a_probe_of_a_query_over_the_reach_says_at_least(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str
) -> None:
    sandbox.reset()
    # 801 has 130 products: over a reach of 100, so the crawl splits it; 802 (45) is not.
    code, out = probe(sandbox, mongod, mongo_db_name, "cat_id=801,802",
                      TMAPI_RESULT_CAP="100")
    assert code == 0, out
    assert re.search(r"cat_id=801\S* +at least 7 calls \(130 results; over the reach", out), out
    assert re.search(r"cat_id=802\S* +3 calls \(45 results; page 1 paid", out), out
    assert "Total: at least 10 calls for 2 of 2 queries" in out
    assert sandbox.stats()["requests"] == 2
    # Probed again: the page 1s the probe holds are not paid for twice.
    code, out = probe(sandbox, mongod, mongo_db_name, "cat_id=801,802",
                      TMAPI_RESULT_CAP="100")
    assert code == 0, out
    assert "Probe: 0 paid API calls now" in out
    assert "page 1 of each of 2 planned queries (2 held already" in out
    assert sandbox.stats()["requests"] == 2


def test_a_probe_stopped_by_the_budget_estimates_what_it_probed(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str, tmp_path: Path
) -> None:
    sandbox.reset()
    code, out = probe(sandbox, mongod, mongo_db_name, "cat_id=801,802",
                      TMAPI_MAX_REQUESTS="1")
    assert code == 1
    assert "error: the probe stopped (tmapi_budget_exhausted) after 1 paid calls" in out
    assert "1 probes" in out  # the probe's final line: what it cost
    assert out.count("unknown (not probed, no finished crawl had it)") == 1
    assert "Total: 7 calls for 1 of 2 queries, 1 of them paid already" in out \
        or "Total: 3 calls for 1 of 2 queries, 1 of them paid already" in out, out
    assert sandbox.stats()["requests"] == 1
    # The crawl resumes it: the page 1 probed is not paid again.
    crawled = crawl_in_process(tmp_path, "cat_id=801,802", base_url=sandbox.url,
                               mongo_uri=mongod.uri, database=mongo_db_name)
    assert crawled.stat("finish_reason") == "finished"
    assert crawled.stat(stats_keys.RESUME_PAGES_HELD) == 1
    billed = records(sandbox.stats())  # both runs: every page once, 7 + 3 in all
    assert len(billed) == len(set(billed)) == 7 + 3


def _figure(summary: PageSummary, reach: int | None = 2000, max_pages: int | None = None,
            ) -> Figure:
    settings = FrontierSettings(reach=reach, window=8, max_pages=max_pages)
    return asyncio.run(from_probe(settings, Query(cat_id=5), summary))


@pytest.mark.parametrize(("summary", "reach", "max_pages", "calls", "at_least"), [
    (PageSummary(20, total_count=130, has_next_page=True), 2000, None, 7, False),
    (PageSummary(20, total_count=130, has_next_page=True), 2000, 3, 3, False),
    (PageSummary(12, total_count=12, has_next_page=False), 2000, None, 1, False),
    (PageSummary(0, total_count=0), 2000, None, 1, False),
    # The walk holds the reach: its 100 pages, and page 1 read again under its sort.
    (PageSummary(20, total_count=2000, has_next_page=True), 2000, None, 101, True),
    (PageSummary(20, total_count=4500, has_next_page=True), 2000, None, 225, True),
    (PageSummary(20, has_next_page=True), 2000, None, 2, True),
    (PageSummary(20, total_count=130, has_next_page=True), None, None, 7, True),
], ids=["under-the-reach", "max-pages", "one-page", "empty", "capped-total", "over-the-reach",
        "no-total", "reach-unknown"])
def test_a_probed_page_1_gives_exact_pages_under_the_reach_and_a_floor_over_it(
    summary: PageSummary, reach: int | None, max_pages: int | None, calls: int, at_least: bool
) -> None:
    figure = _figure(summary, reach, max_pages)
    assert (figure.calls, figure.at_least, figure.probed) == (calls, at_least, True)


# A split category: walks, flag cells and sort cells all count toward the planned query.

SPLIT = "901"
SPLIT_CAP = 100


@pytest.fixture(scope="module")
def split_sandbox() -> Iterator[SandboxProcess]:
    """Most of a 2,500-product category at one price, over a reach of 100: the crawl walks the
    prices and reads the price point in flag cells and under every sort."""
    with SandboxProcess(token=[TOKEN], size={SPLIT: 2500}, result_cap=SPLIT_CAP,
                        price_point_share=0.8, latency=0.002) as server:
        yield server


def test_the_estimate_of_a_split_category_is_what_its_re_crawl_pays(
    split_sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str, tmp_path: Path
) -> None:
    sandbox = split_sandbox
    arguments = (f"cat_id={SPLIT}", "page_size=50")
    settings = {"TMAPI_CONCURRENCY": 2, "TMAPI_RESULT_CAP": SPLIT_CAP, "LOG_LEVEL": "INFO"}
    sandbox.reset()
    first = crawl_in_process(tmp_path / "1", *arguments, base_url=sandbox.url, mongo_uri=mongod.uri,
                             database=mongo_db_name, settings=settings)
    assert first.stat("finish_reason") == "finished", first.log[-3000:]
    assert first.stat("tmapi/split/by/flag") > 0
    assert first.stat("tmapi/split/by/sort") > 0
    code, out = estimate(mongod, mongo_db_name, *arguments, TMAPI_RESULT_CAP=str(SPLIT_CAP))
    assert code == 0, out
    quoted, known = total(out)
    assert known == 1
    sandbox.reset()
    again = crawl_in_process(tmp_path / "2", *arguments, "fresh=true", base_url=sandbox.url,
                             mongo_uri=mongod.uri, database=mongo_db_name, settings=settings)
    assert again.stat("finish_reason") == "finished"
    paid = sandbox.stats()["requests"]
    print(f"split category re-crawl: quoted {quoted} calls, paid {paid}")
    assert abs(paid - quoted) <= 0.05 * paid, (paid, quoted)
