"""``scrapy estimate``: the calls a crawl will probably take, from earlier crawls, for free."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crawling import TOKEN, crawl
from tests.servers import MongodProcess
from tests.test_commands import scrapy
from tmapi_crawler.sandbox.process import SandboxProcess

SIZES = {"801": 130, "802": 45}
ARGUMENTS = ("cat_id=801,802", "language=en,ru")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES, latency=0.005) as server:
        yield server


def estimate(mongod: MongodProcess, database: str, *arguments: str) -> tuple[int, str]:
    args = [a for argument in arguments for a in ("-a", argument)]
    done = scrapy("estimate", "category_items", *args, MONGO_URI=mongod.uri,
                  MONGO_DATABASE=database)
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
    first = crawl(tmp_path / "1", *ARGUMENTS, base_url=sandbox.url, mongo_uri=mongod.uri,
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
    again = crawl(tmp_path / "2", *ARGUMENTS, "fresh=true", base_url=sandbox.url,
                  mongo_uri=mongod.uri, database=mongo_db_name,
                  settings={"TMAPI_CONCURRENCY": 2})
    assert again.stat("finish_reason") == "finished"
    paid = sandbox.stats()["requests"]
    assert abs(paid - calls) <= 0.05 * paid, (paid, calls)
