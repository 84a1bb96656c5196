"""The answer spool (``storage.spool``): a page paid for is durable in MongoDB before its permit
is released, a resume hands it back instead of paying again, and the ledger drops it.

Components in-process (the engine opens the spider as a crawl does: store, ledger, spool; the
transport is driven directly) against the sandbox over real HTTP and a real mongod; the resume
is a real ``scrapy crawl``.

``keep`` does not wait for MongoDB's answer (``w=0``): the in-process crawls use one connection
(``ONE_CONNECTION``), on which mongod applies operations in order, so that whatever reads after
a keep (on that client, or after the crawl closed it) sees the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response

from tests.crawling import TOKEN, crawl, records
from tests.inprocess import crawler_for, engine_stopped, project_settings
from tests.servers import MongodProcess
from tests.test_transport import Listener
from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.crawl import crawl_id as crawl_id_of
from tmapi_crawler.frontier.context import META_KEY, PageContext
from tmapi_crawler.items import ProductPage
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.storage.collections import LEDGER, SPOOL
from tmapi_crawler.storage.spool import Spool
from tmapi_crawler.storage.store import ProductStore
from tmapi_crawler.storage.writer import MongoPipeline
from tmapi_crawler.transport.limiter import AdaptiveLimiter
from tmapi_crawler.transport.middleware import TmapiTransportMiddleware

SIZES = {"101": 45, "102": 20}
ARGUMENTS = {"cat_id": "101,102"}
#: Pages of 20 products.
PAGES = 3 + 1
#: Client option: every operation of a crawl's client on one connection, in order.
ONE_CONNECTION = "/?maxPoolSize=1"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES) as process:
        yield process


class WatchingLimiter(AdaptiveLimiter):
    """The project's limiter, noting how many answers the spool held at each release."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        super().__init__(settings.getint("TMAPI_CONCURRENCY"),
                         settings.getint("TMAPI_THROTTLE_RECOVERY"))
        self.crawler = crawler
        self.spooled_at_release: list[int] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> WatchingLimiter:
        return cls(crawler)

    async def release(self) -> None:
        answers = ProductStore.of(self.crawler).db[SPOOL]
        self.spooled_at_release.append(await answers.count_documents({}))
        await super().release()


Scenario = Callable[[Crawler, TmapiTransportMiddleware], Awaitable[Any]]


def run(base_url: str, mongod: MongodProcess, database: str, scenario: Scenario,
        reason: str = "finished", **settings: Any) -> tuple[Any, dict[str, Any]]:
    """Open a crawl of ``ARGUMENTS`` storing into ``database`` (its transport on
    ``base_url``), run ``scenario``, close the crawl with ``reason``."""

    async def main() -> tuple[Any, dict[str, Any]]:
        crawler = crawler_for(project_settings(
            TMAPI_BASE_URL=base_url, MONGO_URI=mongod.uri + ONE_CONNECTION,
            MONGO_DATABASE=database,
            **settings), **ARGUMENTS)
        transport = crawler.get_downloader_middleware(TmapiTransportMiddleware)
        assert transport is not None
        await crawler.engine.open_spider_async()
        try:
            result = await scenario(crawler, transport)
        finally:
            if crawler.engine.spider is not None:
                await crawler.engine.close_spider_async(reason=reason)
            await engine_stopped(crawler)
        return result, crawler.stats.get_stats()

    return asyncio.run(main())


async def store_pages(crawler: Crawler, responses: list[Response]) -> None:
    """Parse and store the pages, as the crawl does: the ledger records them (and drops
    their answers from the spool)."""
    pipeline = crawler.get_item_pipeline(MongoPipeline)
    assert pipeline is not None
    for response in responses:
        async for output in crawler.spider.parse(response):
            if isinstance(output, ProductPage):
                await pipeline.process_item(output)
    await pipeline.flush()


async def planned(crawler: Crawler) -> list[Request]:
    """The first pages the crawl asks for, as its spider builds them."""
    spider = crawler.spider
    spider.frontier = spider.build_frontier()
    decision = await spider.frontier.plan(spider.plan.queries)
    return [spider.page_request(context) for context in decision.follow]


def key_of(request: Request) -> str:
    return PageContext.from_dict(request.meta[META_KEY]).key


def test_an_answer_is_in_the_spool_before_its_permit_is_released(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str,
) -> None:
    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> Any:
        request = (await planned(crawler))[0]
        response = await transport.process_request(request)
        limiter = transport.limiter
        assert isinstance(limiter, WatchingLimiter)
        document = await ProductStore.of(crawler).db[SPOOL].find_one()
        return request, response, limiter.spooled_at_release, crawl_id_of(crawler), document

    (request, response, at_release, crawl_id, document), stats = run(
        sandbox.url, mongod, mongo_db_name, scenario, reason="shutdown",
        TMAPI_LIMITER=f"{__name__}.WatchingLimiter")
    assert isinstance(response, Response)
    assert at_release == [1]
    assert document["_id"] == f"{crawl_id}:{key_of(request)}"
    assert document["crawl_id"] == crawl_id
    assert document["page"] == request.meta[META_KEY]
    assert bytes(document["body"]) == response.body
    assert document["status"] == api.SUCCESS_CODE
    assert document["calls"] == 1
    assert stats[stats_keys.SPOOL_KEPT] == 1
    # An interrupted crawl keeps its spool for the resume.
    assert mongo_client[mongo_db_name][SPOOL].count_documents({}) == 1


def test_a_spooled_page_is_not_paid_for_again_on_resume(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, tmp_path: Path,
) -> None:
    """The first run dies (as under a SIGKILL) with a page paid for and spooled but neither
    parsed nor stored; the same command resumes the crawl and pays for every page once."""

    async def paid_not_stored(crawler: Crawler, transport: TmapiTransportMiddleware) -> str:
        request = (await planned(crawler))[0]
        assert isinstance(await transport.process_request(request), Response)
        return crawl_id_of(crawler)

    crawl_id, _ = run(sandbox.url, mongod, mongo_db_name, paid_not_stored, reason="shutdown")
    assert sandbox.stats()["requests"] == 1
    second = crawl(tmp_path, *(f"{k}={v}" for k, v in ARGUMENTS.items()), base_url=sandbox.url,
                   mongo_uri=mongod.uri, database=mongo_db_name)
    assert second.returncode == 0, second.log[-3000:]
    assert second.stat(stats_keys.CRAWL_ID) == crawl_id
    assert second.stat(stats_keys.SPOOL_REPLAYED) == 1
    # The answer handed back was in the spool when the ledger dropped it: nothing missing.
    assert second.stat(stats_keys.SPOOL_NOT_KEPT, None) is None
    assert second.stat(stats_keys.RESUME_CALLS_SAVED) == 1
    assert second.stat(stats_keys.REQUESTS) == PAGES - 1
    billed = Counter(records(sandbox.stats()))
    assert sum(billed.values()) == PAGES
    assert max(billed.values()) == 1
    truth = {i for cat in SIZES for i in sandbox.truth(cat_id=int(cat))["item_ids"]}
    db = mongo_client[mongo_db_name]
    assert {d["_id"] for d in db["products"].find({}, {"_id": 1})} == truth
    assert db[LEDGER].count_documents({"crawl_id": crawl_id, "state": "stored"}) == PAGES
    assert db[SPOOL].count_documents({}) == 0
    run_document = db["crawl_runs"].find_one({"_id": crawl_id})
    assert run_document["cost"]["saved_by_resume"] == 1
    # Every call the server billed, over both runs: each page once.
    assert run_document["cost"]["calls"] == PAGES


def test_the_ledger_drops_recorded_answers_and_a_finished_crawl_leaves_none(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str,
) -> None:
    db = mongo_client[mongo_db_name]

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> Any:
        first, second = (await planned(crawler))[:2]
        responses = [await transport.process_request(r) for r in (first, second)]
        answers = ProductStore.of(crawler).db[SPOOL]
        spooled = sorted([d["_id"] async for d in answers.find()])
        await store_pages(crawler, responses[:1])
        left = [d["_id"] for d in db[SPOOL].find()]
        return first, second, spooled, left, crawl_id_of(crawler)

    (first, second, spooled, left, crawl_id), stats = run(sandbox.url, mongod, mongo_db_name,
                                                          scenario)
    assert stats[stats_keys.SPOOL_KEPT] == 2
    # Every answer sent was there when the ledger dropped it.
    assert stats_keys.SPOOL_NOT_KEPT not in stats
    assert spooled == sorted(f"{crawl_id}:{key_of(r)}" for r in (first, second))
    assert db[LEDGER].count_documents({"key": key_of(first), "state": "stored"}) == 1
    assert left == [f"{crawl_id}:{key_of(second)}"]
    # Closed ``finished``: nothing of the crawl is left.
    assert db[SPOOL].count_documents({}) == 0


def test_the_token_never_reaches_the_spool(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
) -> None:
    """Even an answer that echoes the token: what is kept is redacted."""
    body = json.dumps({"code": 200, "msg": f"ok for {TOKEN}", "data": {
        "items": [], "total_count": 0, "has_next_page": False}}).encode()
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> Any:
        return await transport.process_request((await planned(crawler))[0])

    with Listener(answer) as listener:
        response, stats = run(listener.url, mongod, mongo_db_name, scenario,
                              reason="shutdown")
    assert isinstance(response, Response)
    assert stats[stats_keys.SPOOL_KEPT] == 1
    documents = list(mongo_client[mongo_db_name][SPOOL].find())
    assert len(documents) == 1
    stored = b"".join(bson.encode(d) for d in documents)
    assert TOKEN.encode() not in stored
    assert b"ok for ***" in bytes(documents[0]["body"])


def test_mongodb_refusing_the_spool_does_not_stop_the_crawl(
    sandbox: SandboxProcess, mongod: MongodProcess, mongo_client: pymongo.MongoClient,
    mongo_db_name: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusals cannot be seen when the answers are sent (``w=0``): they are counted once
    the ledger recorded the pages and found their answers missing from the spool."""
    # A collection that refuses every document it is given.
    mongo_client[mongo_db_name].create_collection(
        SPOOL, validator={"never": {"$exists": True}}, validationAction="error")

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> Any:
        responses = [await transport.process_request(r)
                     for r in (await planned(crawler))[:2]]
        not_kept_when_sent = crawler.stats.get_value(stats_keys.SPOOL_NOT_KEPT)
        await store_pages(crawler, responses)
        return responses, not_kept_when_sent

    with caplog.at_level(logging.WARNING):
        (responses, not_kept_when_sent), stats = run(sandbox.url, mongod, mongo_db_name,
                                                     scenario, reason="shutdown")
    assert all(isinstance(r, Response) for r in responses)
    assert [len(r.json()["data"]["items"]) for r in responses] == [20, 20]
    assert not_kept_when_sent is None
    assert stats[stats_keys.SPOOL_KEPT] == 2
    assert stats[stats_keys.SPOOL_NOT_KEPT] == 2
    assert stats[stats_keys.REQUESTS] == 2
    assert mongo_client[mongo_db_name][LEDGER].count_documents({"state": "stored"}) == 2
    assert sum("did not keep an answer in the spool" in r.getMessage()
               for r in caplog.records) == 1


def test_a_distributed_worker_finds_an_answer_another_worker_spooled(
    mongod: MongodProcess, mongo_db_name: str,
) -> None:
    """A worker that died after paying: the page its queue delivers again to another worker
    (``may_hold``) is looked up by ``_id``, and so is any page spooled before a worker opened;
    a page delivered for the first time is not looked up at all."""
    context = PageContext.from_dict({"query": {"cat_id": 5}, "page": 2})

    async def main() -> tuple[Any, ...]:
        client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(
            mongod.uri + ONE_CONNECTION)
        try:
            db = client[mongo_db_name]
            dead, alive, later = (crawler_for(project_settings()) for _ in range(3))
            for crawler in (dead, alive):
                await Spool.of(crawler).open(db, "cluster-crawl", resumed=False,
                                             distributed=True)
            await Spool.of(dead).keep(context.key, context.to_dict(), b'{"code": 200}', status=200,
                                      encoding="utf-8", calls=3)
            first_delivery = Spool.of(alive).replaying, await Spool.of(alive).answer(context.key)
            Spool.of(alive).may_hold(context.key)
            Spool.of(alive).may_hold(context.at(3, 3).key)
            found = await Spool.of(alive).answer(context.key)
            missing = await Spool.of(alive).answer(context.at(3, 3).key)
            await Spool.of(later).open(db, "cluster-crawl", resumed=False, distributed=True)
            held_at_open = await Spool.of(later).answer(context.key)
            return first_delivery, found, missing, held_at_open
        finally:
            await client.close()

    first_delivery, found, missing, held_at_open = asyncio.run(main())
    assert first_delivery == (False, None)
    assert found is not None
    assert bytes(found["body"]) == b'{"code": 200}'
    assert found["calls"] == 3
    assert missing is None
    assert held_at_open is not None
