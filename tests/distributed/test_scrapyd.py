"""Deploying and starting workers through Scrapyd, the way Scrapy users run crawls on servers.

A real ``scrapyd`` runs in a temporary directory; ``scrapyd-deploy`` builds the project's egg
(with every settings profile and the Lua scripts) and uploads it; ``schedule.json`` starts a
seeding worker and a pure worker with the ``distributed`` profile. The token and the servers'
addresses come from Scrapyd's environment, never through its API. Both run as the README
prints them, through ``scripts/scrapyd`` and ``scripts/scrapyd-deploy``, in a shell with no
virtual environment on its ``PATH``.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.cluster import WORKER_SETTINGS, Env, stored_products, truth
from tests.crawling import PROJECT_ROOT, TOKEN, records
from tmapi_crawler.servers import free_port, port_open

SCRIPTS = PROJECT_ROOT / "scripts"
#: A fresh shell's PATH: no virtual environment activated.
FRESH_PATH = "/usr/local/bin:/usr/bin:/bin"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Scrapyd:
    """A scrapyd process with its own configuration, eggs, logs and database."""

    def __init__(self, directory: Path, environment: dict[str, str]) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scrapyd.conf").write_text(
            "[scrapyd]\n"
            f"bind_address = 127.0.0.1\nhttp_port = {self.port}\n"
            f"eggs_dir = {directory / 'eggs'}\nlogs_dir = {directory / 'logs'}\n"
            f"dbs_dir = {directory / 'dbs'}\nitems_dir =\n"
            "max_proc = 4\npoll_interval = 0.2\n"
        )
        self.log = (directory / "scrapyd.out").open("w")
        self.process = subprocess.Popen(
            [str(SCRIPTS / "scrapyd")], cwd=directory, env={**environment, "PATH": FRESH_PATH},
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((self.directory / "scrapyd.out").read_text())
            time.sleep(0.05)

    def call(self, endpoint: str, data: list[tuple[str, str]] | None = None,
             **query: str) -> dict[str, Any]:
        url = self.url + endpoint + ("?" + urllib.parse.urlencode(query) if query else "")
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        with _OPENER.open(url, data=body, timeout=30) as answer:
            return json.loads(answer.read())

    def job_log(self, job: str) -> str:
        return (self.directory / "logs" / "tmapi_crawler" / "category_items"
                / f"{job}.log").read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def scrapyd(tmp_path: Path) -> Iterator[Callable[[Env], Scrapyd]]:
    started: list[Scrapyd] = []

    def start(env: Env) -> Scrapyd:
        server = Scrapyd(tmp_path / "scrapyd", {
            key: value for key, value in env.variables.items()
            if key not in ("SCRAPY_PROJECT", "SCRAPY_SETTINGS_MODULE")
        })
        started.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def deploy(server: Scrapyd, config_home: Path) -> subprocess.CompletedProcess[str]:
    """``scrapyd-deploy`` to the test's Scrapyd, a target defined in the user's scrapy.cfg."""
    config_home.mkdir(parents=True, exist_ok=True)
    (config_home / "scrapy.cfg").write_text(f"[deploy:test]\nurl = {server.url}\n"
                                            "project = tmapi_crawler\n")
    return subprocess.run(
        [str(SCRIPTS / "scrapyd-deploy"), "test", "--version", "1"], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": FRESH_PATH, "XDG_CONFIG_HOME": str(config_home), "HOME": str(config_home)},
    )


def test_workers_deployed_and_started_through_scrapyd(
    start_env: Callable[..., Env], scrapyd: Callable[[Env], Scrapyd],
    mongo_client: pymongo.MongoClient, tmp_path: Path,
) -> None:
    env = start_env(latency=0.02, default_size=200)
    server = scrapyd(env)
    deployed = deploy(server, tmp_path / "config")
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    assert '"status": "ok"' in deployed.stdout
    assert server.call("listspiders.json", project="tmapi_crawler")["spiders"] == [
        "category_items"]

    settings = [("setting", "TMAPI_PROFILE=distributed")] + [
        ("setting", f"{name}={value}") for name, value in WORKER_SETTINGS.items()]
    jobs = []
    for name, arguments in [("seeding", [("cat_id", "1,2,3")]), ("pure", [])]:
        stats = tmp_path / f"{name}.stats.json"
        answer = server.call("schedule.json", [
            ("project", "tmapi_crawler"), ("spider", "category_items"), *settings,
            ("setting", f"STATS_FILE={stats}"), *arguments,
        ])
        assert answer["status"] == "ok", answer
        jobs.append((answer["jobid"], stats))

    deadline = time.monotonic() + 180
    while {job["id"] for job in server.call("listjobs.json", project="tmapi_crawler")
           ["finished"]} != {job for job, _ in jobs}:
        assert time.monotonic() < deadline, server.call("listjobs.json")
        time.sleep(0.1)

    for job, stats in jobs:
        log = server.job_log(job)
        assert stats.exists(), log[-3000:]
        assert json.loads(stats.read_text())["finish_reason"] == "finished", log[-3000:]
        assert "cluster crawl" in log  # the distributed profile's scheduler ran
        assert TOKEN not in log
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    assert sorted(records(env.sandbox.stats())) == sorted(pages)
    assert env.status()["state"] == "finished"
    assert TOKEN not in json.dumps(server.call("listjobs.json", project="tmapi_crawler"))
