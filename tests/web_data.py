"""A real catalogue for the web app's tests: the sandbox crawled twice (in-process), prices
moved between.

Category 301 also shrinks between the crawls, so its last listings vanish: every page and list
of the app then has something to show (new products, changes, drops, rises, vanished).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.crawling import TOKEN
from tests.inprocess import crawl_in_process
from tests.servers import MongodProcess
from tmapi_crawler.sandbox.process import SandboxProcess

SIZES = {"301": 120, "303": 80}
ARGUMENTS = ("cat_id=301,303", "language=en,zh")


@dataclass(frozen=True)
class Crawled:
    uri: str
    database: str
    first: str
    second: str


def crawl_twice(tmp_path: Path, mongod: MongodProcess, database: str) -> Crawled:
    """Two complete crawls of the sandbox into ``database``: prices moved, 10 listings gone."""
    crawl_ids = []
    with SandboxProcess(token=[TOKEN], size=SIZES) as sandbox:
        for run, change in enumerate(({}, {"price_epoch": 1, "sizes": {"301": 110}})):
            sandbox.configure(**change)
            result = crawl_in_process(tmp_path / f"crawl{run}", *ARGUMENTS,
                                      base_url=sandbox.url, mongo_uri=mongod.uri,
                                      database=database)
            assert result.returncode == 0, result.log[-3000:]
            crawl_ids.append(result.stat("tmapi/crawl_id"))
    return Crawled(mongod.uri, database, *crawl_ids)
