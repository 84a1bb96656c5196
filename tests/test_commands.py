"""What the project's commands share: commands printed as typed, pipes, the crawl's last line,
``scrapy report``, and the ``scripts/scrapy`` wrapper that needs no activated environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
import pytest
import redis

from tests.crawling import PROJECT_ROOT, TOKEN
from tests.servers import MongodProcess, RedisProcess
from tmapi_crawler.commands.report import summary
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.shell import command_line
from tmapi_crawler.storage import embedded as embedded_mongo
from tmapi_crawler.storage.collections import CRAWL_RUNS, LEDGER

#: Environment variables of the project, left out so a developer's shell changes nothing here.
OWN = re.compile(r"(TMAPI|MONGO|REDIS)_|SCRAPY_(SETTINGS_MODULE|PROJECT)$")


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not OWN.match(k)}, **extra}


def scrapy(*args: str, stdout: int | None = subprocess.PIPE, **env: str
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scrapy", *args], cwd=PROJECT_ROOT,
                          env=clean_env(**env), stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=180, check=False)


# Commands as the user types them.


def test_commands_are_printed_for_the_folder_the_user_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCRAPY_PROJECT", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)
    assert command_line("mongo", "start") == "scripts/scrapy mongo start"
    monkeypatch.chdir(PROJECT_ROOT / "docs" / "reference")
    assert command_line("report") == "../../scripts/scrapy report"
    monkeypatch.chdir(tmp_path)
    assert command_line("report") == f"cd {PROJECT_ROOT} && scripts/scrapy report"
    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setenv("SCRAPY_PROJECT", "distributed")
    assert command_line("status", "category_items", profile=True) == (
        "SCRAPY_PROJECT=distributed scripts/scrapy status category_items")
    assert command_line("redis", "stop") == "scripts/scrapy redis stop"
    assert command_line("crawl", "x", "-a", "plan=my plan.yaml") == (
        "scripts/scrapy crawl x -a 'plan=my plan.yaml'")


def test_the_wrapper_works_in_a_shell_without_the_environment(tmp_path: Path) -> None:
    """No venv on PATH, no PYTHONPATH: what a new terminal has."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "REDIS_EMBEDDED_DIR": str(tmp_path / "redis")}
    done = subprocess.run(["scripts/scrapy", "redis", "uri"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"error: the embedded Redis is not running (data in {tmp_path / 'redis'}): start it "
        "with scripts/scrapy redis start")
    below = subprocess.run(["../scripts/scrapy", "version"], cwd=PROJECT_ROOT / "docs", env=env,
                           capture_output=True, text=True, timeout=180, check=False)
    assert below.returncode == 0, below.stderr
    assert below.stdout.startswith("Scrapy 2.19")


def test_the_wrapper_outside_the_project_says_where_to_go(tmp_path: Path) -> None:
    done = subprocess.run([str(PROJECT_ROOT / "scripts" / "scrapy"), "report"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: run it from the project folder: cd {PROJECT_ROOT} "
                                   "&& scripts/scrapy report")


# Pipes closed by the reader.


@pytest.mark.parametrize("command", [
    ("status", "category_items"), ("status", "category_items", "--json"), ("redis", "uri"),
    ("mongo", "uri"),
])
def test_a_reader_that_went_away_ends_a_command_quietly(
    command: tuple[str, ...], redis_server: RedisProcess, mongod: MongodProcess
) -> None:
    """``scrapy status | head``: the reader may close before the command writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = scrapy(*command, stdout=write, SCRAPY_PROJECT="distributed",
                      REDIS_URL=redis_server.uri, MONGO_URI=mongod.uri)
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode == 141


def test_status_piped_into_head(redis_server: RedisProcess) -> None:
    # A prefix of its own: other tests' crawls in the shared redis-server would change the line.
    env = clean_env(SCRAPY_PROJECT="distributed", REDIS_URL=redis_server.uri,
                    TMAPI_REDIS_PREFIX=f"pipe{uuid.uuid4().hex[:8]}")
    done = subprocess.run(f"{sys.executable} -m scrapy status category_items | head -c 1",
                          shell=True, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout == "n"
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr


# A crawl's last line, and the report.


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={"701": 50, "702": 30}) as server:
        yield server


def test_with_nolog_a_crawl_prints_one_summary_line(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str, mongo_client
) -> None:
    done = scrapy("crawl", "category_items", "-a", "cat_id=701,702", "-a", "language=en,zh",
                  "--nolog", TMAPI_TOKEN=TOKEN, TMAPI_BASE_URL=sandbox.url, MONGO_URI=mongod.uri,
                  MONGO_DATABASE=mongo_db_name)
    assert done.returncode == 0
    assert done.stdout == ""
    products = mongo_client[mongo_db_name].products.count_documents({})
    line = done.stderr.strip()
    assert re.fullmatch(
        rf"crawl \S+ finished in [\d.]+ s: (\d+) API calls \(10 pages, \d+ retries, 0 splits, "
        rf"0 failures, 0 probes; [\d.]+ per product\), 10 pages, 160 sightings of "
        rf"{products} products \({products} new, 0 seen before\), 0 rejected", line), line
    assert int(line.split(": ")[1].split()[0]) == sandbox.stats()["requests"]


def test_report_shows_cost_and_changes_and_never_starts_mongodb(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_db_name: str, tmp_path: Path
) -> None:
    env = {"TMAPI_TOKEN": TOKEN, "TMAPI_BASE_URL": sandbox.url, "MONGO_URI": mongod.uri,
           "MONGO_DATABASE": mongo_db_name}
    sandbox.reset()
    for epoch in (0, 1):
        sandbox.configure(price_epoch=epoch, sizes={"701": 50 - 5 * epoch, "702": 30})
        assert scrapy("crawl", "category_items", "-a", "cat_id=701", "--nolog",
                      **env).returncode == 0
    calls = sandbox.stats()["requests"]
    report = scrapy("report", **env)
    assert report.returncode == 0, report.stderr
    out = report.stdout
    assert f"MongoDB {mongod.uri}, database '{mongo_db_name}'" in out
    assert "50 products in 1 categories" in out
    assert re.search(r"cost +\d+ API calls \(answers by code: 200: 3\)", out), out
    assert re.search(r"spent +3 API calls \(3 pages, 0 retries, 0 splits, 0 failures, 0 probes; "
                     r"[\d.]+ per product\); by category 701: 3", out), out
    assert calls == 6
    assert re.search(r"found +45 sightings of 45 products: 0 new, 45 seen before", out), out
    assert re.search(r"changed +\d+ products since the crawl before: price \d+ \(\d+ down, "
                     r"\d+ up\)", out), out
    assert re.search(r"vanished +5 listings", out), out
    assert out.rstrip().endswith('scripts/scrapy mongo shell (examples in README.md, "Querying")')

    data_dir = tmp_path / "stopped"
    embedded_mongo.ensure_running(data_dir)
    embedded_mongo.stop(data_dir)
    stopped = scrapy("report", MONGO_EMBEDDED_DIR=str(data_dir))
    assert stopped.returncode == 1
    assert stopped.stdout == ""
    assert stopped.stderr.strip() == (f"error: the embedded MongoDB is not running (data in "
                                      f"{data_dir}): start it with scripts/scrapy mongo start")
    assert embedded_mongo.running(data_dir) is None
    nothing = scrapy("report", MONGO_EMBEDDED_DIR=str(tmp_path / "never"))
    assert nothing.returncode == 1
    assert "no crawl has stored anything here yet" in nothing.stderr
    assert not (tmp_path / "never").exists()


def test_the_reports_duration_leaves_out_the_wait_before_closing(
    mongo_client: pymongo.MongoClient, mongo_db_name: str
) -> None:
    """A cluster worker waits MAX_IDLE_TIME_BEFORE_CLOSE (30 s) with nothing left before it
    closes: the crawl took until its last page was recorded, not until then."""
    db = mongo_client[mongo_db_name]
    start = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    db[CRAWL_RUNS].insert_one({"_id": "c1", "started_at": start, "finish_reason": "finished",
                               "finished_at": start + timedelta(seconds=42)})
    db[LEDGER].insert_many([{"crawl_id": "c1", "key": f"q#{n}", "seq": n,
                             "at": start + timedelta(seconds=4 * n)} for n in (1, 3, 2)])
    assert "started 2026-12-05 12:00 UTC, took 12 s: finished" in summary(db, "here")
    db[LEDGER].delete_many({})  # no page recorded: until it closed
    assert "took 42 s: finished" in summary(db, "here")


def test_status_finds_the_embedded_redis_that_seed_started(
    tmp_path: Path, mongod: MongodProcess, mongo_db_name: str
) -> None:
    """Distributed on one machine: no REDIS_URL, the embedded Redis is shared by the commands."""
    env = {"SCRAPY_PROJECT": "distributed", "REDIS_EMBEDDED_DIR": str(tmp_path / "redis"),
           # seed records the crawl (crawl_runs)
           "MONGO_URI": mongod.uri, "MONGO_DATABASE": mongo_db_name}
    try:
        before = scrapy("status", "category_items", **env)
        assert before.returncode == 1
        assert "the embedded Redis is not running" in before.stderr
        assert not (tmp_path / "redis").exists(), "status never starts it"
        seeded = scrapy("seed", "category_items", "-a", "cat_id=1,2", **env)
        assert seeded.returncode == 0, seeded.stderr
        assert seeded.stdout.startswith("queued 2 of 2 queries into new crawl")
        status = scrapy("status", "category_items", "--json", **env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["queued"] == 2
        url = scrapy("redis", "uri", **env).stdout.strip()
        assert redis.Redis.from_url(url).config_get("appendonly") == {"appendonly": "yes"}
    finally:
        scrapy("redis", "stop", **env)
