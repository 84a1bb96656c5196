"""The shared queue and what it holds, in-process against a real redis-server; then, end to
end, entries written into Redis by someone else (issue 10, defect 2: a queued request with
``meta.proxy`` pointing at a listener was downloaded through it, with the token).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
from scrapy.crawler import Crawler
from scrapy.settings import Settings

from tests.cluster import Env, Worker, cluster_settings, finish, run_with, stored_products, truth
from tests.crawling import TOKEN, records
from tests.servers import RedisProcess
from tmapi_crawler.distributed import entries
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.distributed.queue import CrawlGone, Leased, Push, page_push
from tmapi_crawler.distributed.status import read_status, read_totals
from tmapi_crawler.frontier.context import CellRef, PageContext
from tmapi_crawler.plan import Query
from tmapi_crawler.spiders.category_items import CategoryItemsSpider
from tmapi_crawler.storage.coverage import whole_categories

PAGE = PageContext(Query(cat_id=1031922, sort="sales", price_start="1.5", new_arrival=True),
                   page=3, last=7)
QUERY = Query(cat_id=1).to_dict()


def spider(settings: Settings) -> CategoryItemsSpider:
    return CategoryItemsSpider.from_crawler(Crawler(CategoryItemsSpider, settings))


# What an entry may hold.


def test_an_entry_is_the_page_spec_and_its_priority() -> None:
    cell = PageContext(Query(cat_id=5, price_start="9.9", price_end="9.9"), by_price=False,
                       cell=CellRef("cat_id=5", 3), ahead=100, depth=2)
    for context, priority in [(PAGE, 0), (cell, 1), (PageContext(Query(cat_id=1)), -2)]:
        text = entries.encode(context, priority)
        assert set(json.loads(text)) == {"page", "priority"}
        assert entries.decode(text) == (context, priority)
        assert entries.decode(text.encode()) == (context, priority)


@pytest.mark.parametrize(("entry", "why"), [
    ({"url": "http://evil.test/1688/category/items/v2?cat_id=1&page=1", "method": "GET",
      "meta": {"proxy": "http://127.0.0.1:1", "tmapi": PAGE.to_dict()}, "callback": "parse"},
     "expected exactly the keys page and priority"),
    ({"page": PAGE.to_dict(), "priority": 0, "meta": {"proxy": "http://127.0.0.1:1"}},
     "expected exactly the keys page and priority"),
    ({"page": PAGE.to_dict(), "priority": 0, "headers": {"Proxy-Authorization": "x"}},
     "expected exactly the keys page and priority"),
    ({"page": PAGE.to_dict(), "priority": True}, "priority True"),
    ({"page": PAGE.to_dict(), "priority": 10**6}, "priority 1000000"),
    ({"page": {**PAGE.to_dict(), "url": "http://evil.test/"}, "priority": 0}, "not a page spec"),
    ({"page": {**PAGE.to_dict(), "page": "3"}, "priority": 0}, "canonical form"),
    ({"page": {**PAGE.to_dict(), "page": 0}, "priority": 0}, "pages start at 1"),
    ({"page": {**PAGE.to_dict(), "query": {**QUERY, "cat_id": "1"}}, "priority": 0},
     "query not in its canonical form"),
    ({"page": {**PAGE.to_dict(), "query": {**QUERY, "sort": "cheapest"}}, "priority": 0},
     "sort: 'cheapest' is not one of"),
    ({"page": {**PAGE.to_dict(), "query": {**QUERY, "page_size": -5}}, "priority": 0},
     "page_size: '-5' is not a positive integer"),
    ({"page": {**PAGE.to_dict(), "query": {**QUERY, "apiToken": "x"}}, "priority": 0},
     "not a page spec"),
    ({"page": {"query": {"cat_id": 1}}, "priority": 0}, "not a page spec"),
    ([PAGE.to_dict(), 0], "found list"),
])
def test_anything_else_is_refused(entry: Any, why: str) -> None:
    with pytest.raises(entries.RefusedEntry, match=why.replace("(", r"\(")):
        entries.decode(json.dumps(entry))


def test_refused_unread_not_json_or_too_long_or_not_queued_by_the_crawl() -> None:
    with pytest.raises(entries.RefusedEntry, match="not JSON"):
        entries.decode(b"\x80\x04\x95pickle")
    with pytest.raises(entries.RefusedEntry, match="bytes"):
        entries.decode(" " * (entries.MAX_ENTRY_BYTES + 1))
    with pytest.raises(entries.RefusedEntry, match="not queued by this crawl"):
        entries.decode(entries.encode(PAGE, 0), known=False)


def test_the_request_is_rebuilt_from_the_workers_own_base_url(redis_server: RedisProcess) -> None:
    """Whatever base URL a producer had, the worker's spider builds the URL it fetches."""
    settings = cluster_settings(redis_server.uri, TMAPI_BASE_URL="http://api.example:8080")
    request = spider(settings).page_request(entries.decode(entries.encode(PAGE, 0))[0])
    assert request.url.startswith("http://api.example:8080/1688/category/items/v2?")
    assert "proxy" not in request.meta
    assert request.callback is not None


# The queue's scripts.


@pytest.fixture
def cluster(redis_server: RedisProcess, redis_client: redis.Redis) -> Cluster:
    return Cluster(cluster_settings(redis_server.uri), "category_items")


def pushes(settings: Settings, *contexts: PageContext) -> list[Push]:
    producer = spider(settings)
    dupefilter = Cluster(settings, "category_items").dupefilter
    return [page_push(producer.page_request(c), dupefilter) for c in contexts]


def test_a_lease_says_how_many_times_its_entry_was_delivered(cluster: Cluster) -> None:
    """A clean give-back does not count; one counted (a worker that paid for the page and
    stopped before storing it) does. (A lease taken back from a dead worker counts too:
    test_cluster_crawls.py, the dead worker's spooled page.)"""
    async def scenario() -> list[int]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        queue = cluster.queue(crawl_id, "w1")
        await queue.push(pushes(cluster.settings, PAGE))
        seen = []
        for counted in (False, True):
            (leased,) = await queue.pop(1)
            seen.append(leased.deliveries)
            await queue.give_back([leased.id], counted=counted, reason="shutdown")
        (leased,) = await queue.pop(1)
        return [*seen, leased.deliveries]

    assert run_with(cluster, scenario) == [1, 1, 2]


def test_pages_of_equal_priority_are_leased_lowest_page_first(cluster: Cluster) -> None:
    """Not in the order of their ids (fingerprints, random), which could keep a query's early
    page queued to the crawl's end while it held a place in the query's window; a higher
    priority still goes first, and a page given back keeps its place."""
    pages = [PageContext(Query(cat_id=cat_id), page=page, last=40)
             for page in (17, 2, 30, 9, 3) for cat_id in (11, 12)]
    planned = PageContext(Query(cat_id=13))  # a planned query's page 1: priority 0, last

    def spec(leased: list[Leased]) -> list[tuple[int, int]]:
        return [(c.query.cat_id, c.page) for c in (entries.decode(e.entry)[0] for e in leased)]

    async def scenario() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        queue = cluster.queue(crawl_id, "w1")
        await queue.push(pushes(cluster.settings, planned, *pages))
        first = await queue.pop(3)
        await queue.give_back([first[0].id], counted=False, reason="shutdown")
        return spec(first), spec(await queue.pop(20))

    first, rest = run_with(cluster, scenario)
    assert [page for _, page in first] == [2, 2, 3]
    assert rest[0] == first[0]  # given back: first again
    assert [page for _, page in rest[1:-1]] == [3, 9, 9, 17, 17, 30, 30]
    assert rest[-1] == (13, 1)


def test_entries_are_queued_once_leased_and_acknowledged_with_the_progress_counters(
    cluster: Cluster, redis_client: redis.Redis,
) -> None:
    first, second = PageContext(Query(cat_id=1)), PageContext(Query(cat_id=2))
    third, fourth = PageContext(Query(cat_id=3)), PageContext(Query(cat_id=4))

    async def scenario() -> dict[str, Any]:
        crawl_id, fresh = await cluster.begin_crawl(renew=True, worker_info=None)
        assert fresh
        queue = cluster.queue(crawl_id, "w1")
        items = pushes(cluster.settings, first, second, first, third, fourth)
        assert await queue.push(items) == [True, True, False, True, True]
        leased = await queue.pop(10)
        assert len(leased) == 4
        assert all(entry.known for entry in leased)
        decoded = {entries.decode(entry.entry)[0] for entry in leased}
        assert decoded == {first, second, third, fourth}
        assert await queue.pop(10) == []
        assert await queue.ack([leased[0].id, leased[1].id], '{"items": 40}') == 2
        assert await queue.ack([leased[0].id], "{}") == 0  # acknowledged already
        assert await queue.fail(leased[2].id, "422")
        assert await queue.give_back([leased[3].id], counted=False, reason="shutdown") == (1, 0)
        return await read_status(cluster)

    status = run_with(cluster, scenario)
    assert (status["known"], status["done"], status["failed"], status["queued"]) == (4, 2, 1, 1)
    assert status["cluster_progress"]["pages_done"] == 3
    assert redis_client.hget("tmapi:category_items:progress", "w1") == b"{}"
    (failure,) = [json.loads(v) for v in redis_client.hgetall("tmapi:category_items:failed")
                  .values()]
    assert failure["reason"] == "422"
    assert entries.decode(failure["entry"])[0] in (first, second, third, fourth)


def test_an_entry_whose_workers_keep_dying_is_failed_as_poison(cluster: Cluster) -> None:
    async def scenario() -> tuple[int, int]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        queue = cluster.queue(crawl_id, "w1")
        await queue.push(pushes(cluster.settings, PAGE))
        outcomes = []
        for _ in range(cluster.max_deliveries):
            (leased,) = await queue.pop(1)
            outcomes.append(await queue.give_back([leased.id], counted=True, reason="lost"))
        assert outcomes[:-1] == [(1, 0)] * (cluster.max_deliveries - 1)
        return outcomes[-1]

    assert run_with(cluster, scenario) == (0, 1)


def test_a_worker_of_a_replaced_crawl_can_neither_take_nor_acknowledge(cluster: Cluster) -> None:
    async def scenario() -> None:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        old = cluster.queue(crawl_id, "w1")
        await old.push(pushes(cluster.settings, PAGE))
        (leased,) = await old.pop(1)
        await cluster.mark_lost(crawl_id, "restart")
        for step in (old.pop(1), old.ack([leased.id], "{}"), old.fail(leased.id, "x"),
                     old.push(pushes(cluster.settings, PAGE))):
            with pytest.raises(CrawlGone):
                await step
        with pytest.raises(CrawlGone):  # a worker does not join what is left
            await cluster.begin_crawl(renew=False, worker_info={"state": "running"})
        new_id, fresh = await cluster.begin_crawl(renew=True, worker_info=None)  # a seed does
        assert fresh
        assert new_id != crawl_id
        with pytest.raises(CrawlGone):
            await old.pop(1)

    run_with(cluster, scenario)


def test_a_crawl_missing_entries_is_lost_not_complete(
    cluster: Cluster, redis_client: redis.Redis,
) -> None:
    """A restart that kept only part of the writes (RDB snapshots) leaves counts that do not
    add up: the crawl is marked lost, once, and never reported finished."""

    async def scenario() -> list[Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        queue = cluster.queue(crawl_id, "w1")
        await queue.push(pushes(cluster.settings, PAGE, PageContext(Query(cat_id=2))))
        (leased,) = await queue.pop(1)
        assert await cluster.complete(crawl_id) is None  # busy
        await queue.ack([leased.id], "{}")
        redis_client.delete("tmapi:category_items:requests")  # what the restart did not keep
        return [await cluster.complete(crawl_id), await cluster.complete(crawl_id),
                await read_status(cluster)]

    first, again, status = run_with(cluster, scenario)
    assert (first.lost, first.finaliser, first.missing) == (True, True, 1)
    assert (again.lost, again.finaliser) == (True, False)
    assert status["state"] == "lost (counts)"
    assert status["missing"] == 1


def test_a_complete_crawl_has_one_finaliser(cluster: Cluster) -> None:
    async def scenario() -> list[Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        queue = cluster.queue(crawl_id, "w1")
        await queue.push(pushes(cluster.settings, PAGE))
        (leased,) = await queue.pop(1)
        await queue.ack([leased.id], "{}")
        return [await cluster.complete(crawl_id) for _ in range(3)]

    first, *others = run_with(cluster, scenario)
    assert (first.lost, first.finaliser) == (False, True)
    assert [(c.lost, c.finaliser) for c in others] == [(False, False)] * 2


def test_a_page_counts_its_products_once_however_many_workers_fetched_it(
    cluster: Cluster,
) -> None:
    """Issue 13, point 3: a page taken back from a worker thought dead and done again counts
    once, so the sightings equal the products of the pages (they were summed from every
    worker's counters, the dead one's included)."""

    async def scenario() -> dict[str, Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        slow, other = cluster.queue(crawl_id, "slow"), cluster.queue(crawl_id, "other")
        await slow.push(pushes(cluster.settings, PageContext(Query(cat_id=1)),
                               PageContext(Query(cat_id=2))))
        first, second = await slow.pop(2)
        await cluster.reap("slow")  # its heartbeat expired: both go back
        retaken = await other.pop(2)
        assert await other.ack([lease.id for lease in retaken], "{}", [20, 7]) == 2
        assert await slow.ack([first.id, second.id], "{}", [20, 7]) == 0  # too late
        return await read_status(cluster)

    status = run_with(cluster, scenario)
    assert (status["done"], status["cluster_progress"]["items"]) == (2, 27)


def test_the_totals_count_every_workers_losses(
    cluster: Cluster, redis_client: redis.Redis,
) -> None:
    """Issue 13, point 3: the crawl's end sees the losses of every worker (a page one of them
    failed, an item without an id another noticed) and the categories all of them took."""

    async def scenario() -> list[Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        for worker in ("one", "two"):  # registered, as their heartbeats do
            redis_client.hset(cluster.keys.workers, worker, json.dumps({"state": "running"}))
        one, two = cluster.queue(crawl_id, "one"), cluster.queue(crawl_id, "two")
        await one.push(pushes(cluster.settings, *(PageContext(Query(cat_id=c)) for c in (1, 2, 3))))
        (a,) = await one.pop(1)
        (b, c) = await two.pop(2)
        await one.ack([a.id], json.dumps({"categories": [1], "incomplete": []}), [20])
        await two.ack([b.id], json.dumps({"categories": [2, 3], "incomplete": [2]}), [20])
        await two.fail(c.id, "422", json.dumps({"categories": [2, 3], "incomplete": [2, 3],
                                                "answers": {"200": 2, "422": 1}}))
        whole = await read_totals(cluster)
        await one.ack([], json.dumps({"categories": [1], "spilled": 3}))
        return [whole, await read_totals(cluster)]

    whole, spilled = run_with(cluster, scenario)
    assert (whole.categories, whole.incomplete) == ({1, 2, 3}, {2, 3})
    assert whole_categories(whole.categories, whole.incomplete) == [1]
    assert whole.counts() == {"pages": 2, "items": 40, "rejected": 0, "spilled": 0,
                              "failed_pages": 1}
    assert whole.progress["answers"] == {"200": 2, "422": 1}
    assert whole.crawl_wide_losses == ()
    assert spilled.crawl_wide_losses == ("items kept in spill files",)
    assert spilled.counts()["spilled"] == 3


class _RedisWithoutConfig(RedisProcess):
    """A server that refuses CONFIG, as some managed services do."""

    def args(self) -> list[str]:
        return [*super().args(), "--rename-command", "CONFIG", ""]


@pytest.mark.parametrize(("server", "persistent", "problem"), [
    (RedisProcess, True, None),
    (RedisProcess, False, "appendonly no"),
    (_RedisWithoutConfig, True, None),
    (_RedisWithoutConfig, False, "appendonly no"),
])
def test_persistence_is_checked_with_or_without_config(
    tmp_path: Path, server: type[RedisProcess], persistent: bool, problem: str | None,
) -> None:
    with server(tmp_path, persistent=persistent) as running:
        cluster = Cluster(cluster_settings(running.uri), "category_items")
        found = run_with(cluster, cluster.persistence)
    if problem is None:
        assert found is None
    else:
        assert problem in (found or "")


# End to end: what someone else wrote into Redis.


class Listener:
    """A TCP socket that records every connection made to it: a proxy an attacker set up."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    self.received.append(connection.recv(65536))
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


def test_nothing_written_to_redis_redirects_the_token(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    redis_client: redis.Redis, mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env(latency=0.02, default_size=100)
    assert env.seed("cat_id=1,2,3").returncode == 0
    proxy = f"http://127.0.0.1:{(listener := Listener()).port}"
    page = PageContext(Query(cat_id=1), page=2, last=5).to_dict()
    hostile = {
        # A whole request, as the old queue held them, sent through the listener.
        "old-style": {"url": f"{env.sandbox.url}/1688/category/items/v2?cat_id=1&page=2",
                      "method": "GET", "meta": {"proxy": proxy, "tmapi": page},
                      "callback": "parse", "priority": 0},
        # A page spec with a proxy beside it.
        "with-meta": {"page": page, "priority": 0, "meta": {"proxy": proxy}},
    }
    with redis_client.pipeline() as pipe:
        for name, entry in hostile.items():
            pipe.sadd("tmapi:category_items:dupefilter", name)  # as if queued by the crawl
            pipe.zadd("tmapi:category_items:requests", {name: -10})  # first in line
            pipe.hset("tmapi:category_items:entries", name, json.dumps(entry))
        # A well-formed page spec that no worker of the crawl queued.
        pipe.zadd("tmapi:category_items:requests", {"unknown": -10})
        pipe.hset("tmapi:category_items:entries", "unknown",
                  entries.encode(PageContext(Query(cat_id=99)), 0))
        pipe.execute()
    try:
        (worker,) = workers(env, 1)
        assert finish([worker]) == ["finished"]
    finally:
        listener.close()

    assert listener.received == []  # not one connection, so never the token
    assert worker.stats["tmapi/distributed/refused"] == 3
    failed = {k.decode(): json.loads(v)
              for k, v in redis_client.hgetall("tmapi:category_items:failed").items()}
    assert sorted(failed) == ["old-style", "unknown", "with-meta"]
    assert all(f["reason"].startswith("refused: ") for f in failed.values())
    assert json.loads(failed["with-meta"]["entry"])["meta"]["proxy"] == proxy  # kept to inspect
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    served = records(env.sandbox.stats())
    assert sorted(served) == sorted(pages)  # the page was fetched from the sandbox, once
    assert all(r[0] != 99 for r in served)
    status = env.status()
    assert (status["state"], status["refused"], status["failed"]) == ("finished", 3, 3)
    assert TOKEN not in worker.log
