"""The frontier's state shared through Redis (issue 13, point 4), in-process against a real
redis-server: it answers exactly as the one-process state does, two workers decide each thing
once, and a new crawl starts with none of the old one's decisions."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
import redis

from tests.cluster import cluster_settings, run_with
from tests.servers import RedisProcess
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.distributed.queue import CrawlGone, Push
from tmapi_crawler.distributed.state import RedisState
from tmapi_crawler.frontier.decisions import QUERIES_BEGUN, Decision, FrontierSettings
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.state import FrontierState, MemoryState
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query


@pytest.fixture
def cluster(redis_server: RedisProcess, redis_client: redis.Redis) -> Cluster:
    return Cluster(cluster_settings(redis_server.uri), "category_items")


def operations(seed: int, count: int = 400) -> list[tuple[str, tuple[Any, ...]]]:
    """A random mix of every operation on a few keys, as the frontier makes them."""
    rng = random.Random(seed)
    keys = ["q|started", "q|open", "q|hi", "q|edge", "cap|bound", "q|ids3", "q|ids4"]
    made: list[tuple[str, tuple[Any, ...]]] = []
    for _ in range(count):
        key = rng.choice(keys)
        kind = rng.choice(["claim", "get", "add", "raise_to", "lower_to", "add_ids", "forget"])
        if kind in ("add", "raise_to", "lower_to"):
            made.append((kind, (key, rng.randint(-5, 10**11))))
        elif kind == "add_ids":
            ids = [rng.randint(1, 30) * 10**10 for _ in range(rng.randint(0, 5))]
            made.append((kind, (key, ids)))
        elif kind == "forget":
            made.append((kind, tuple(rng.sample(keys, 2))))
        else:
            made.append((kind, (key,)))
    return made


async def replay(state: FrontierState, made: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [await getattr(state, kind)(*args) for kind, args in made]


@pytest.mark.parametrize("seed", range(3))
def test_the_redis_state_answers_as_the_memory_state(cluster: Cluster, seed: int) -> None:
    made = operations(seed)

    async def scenario() -> list[Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        state = RedisState(cluster, lambda: crawl_id)
        assert isinstance(state, FrontierState)
        return await replay(state, made)

    expected = run_with(cluster, lambda: replay(MemoryState(), made))
    assert run_with(cluster, scenario) == expected


def state_keys(client: redis.Redis, cluster: Cluster) -> list[bytes]:
    """The state's keys, but the memos of steps (they expire by themselves)."""
    return sorted(k for k in client.keys(f"{cluster.keys.base}:frontier*") if b":step:" not in k)


def test_a_step_sent_again_is_applied_once(cluster: Cluster) -> None:
    """A step whose answer a lost connection swallowed is sent again: it answers as the first
    time, and changes nothing more (a claim stays the caller's, a counter moves once)."""

    async def scenario() -> list[Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        keys = cluster.keys
        script = cluster.scripts["frontier"]

        async def send(step: str, *args: Any) -> list[Any]:
            return list(await script(keys=[keys.crawl, keys.frontier, keys.frontier_sets,
                                           keys.frontier_step(step)],
                                     args=[crawl_id, "step", 600, 0, *args]))

        answers = [await send("s1", "claim", "q|decided"), await send("s1", "claim", "q|decided"),
                   await send("s2", "add", "q|open", 3), await send("s2", "add", "q|open", 3),
                   await send("s3", "claim", "q|decided")]
        return [answers, await RedisState(cluster, lambda: crawl_id).get("q|open")]

    answers, count = run_with(cluster, scenario)
    # {1, remembered, answer}: the second of each pair is the first's answer, remembered.
    assert answers == [[1, 0, 1], [1, 1, 1], [1, 0, 3], [1, 1, 3], [1, 0, 0]]
    assert count == 3


def test_workers_decide_each_thing_once_and_a_new_crawl_starts_clean(
    cluster: Cluster, redis_client: redis.Redis,
) -> None:
    async def scenario() -> list[Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        one, two = (RedisState(cluster, lambda: crawl_id) for _ in range(2))
        claims = [await one.claim("q|decided"), await two.claim("q|decided")]
        await one.raise_to("cap|bound", 2000)
        cap = await two.get("cap|bound")
        new = [await one.add_ids("q|ids1", [1, 2, 3]), await two.add_ids("q|ids1", [3, 4])]
        await one.add_ids("q|ids2", [5])
        await two.forget("q|ids1")
        left = state_keys(redis_client, cluster)
        renewed, fresh = await cluster.begin_crawl(renew=True, worker_info=None)
        assert fresh
        after = RedisState(cluster, lambda: renewed)
        again = [await after.claim("q|decided"), await after.get("cap|bound")]
        with pytest.raises(CrawlGone):  # a worker of the earlier crawl
            await one.claim("q|other")
        return [claims, cap, new, left, again, state_keys(redis_client, cluster)]

    claims, cap, new, left, again, after = run_with(cluster, scenario)
    assert claims == [True, False]
    assert cap == 2000
    assert new == [3, 1]
    base = cluster.keys.base.encode()
    assert left == [base + b":frontier", base + b":frontier:ids:q|ids2",
                    base + b":frontier:sets"]
    assert again == [True, None]
    assert after == [base + b":frontier"]  # only the new crawl's claim


def test_a_page_decided_again_asks_for_what_it_asked_for_the_first_time(
    cluster: Cluster, redis_client: redis.Redis,
) -> None:
    """A worker decided a page (it claimed the page's split) and died before what the page
    asked for was queued; the worker that takes the lease over decides the page again. It
    must ask for the same pages, or the split is lost with the dead worker (seen as a
    cluster crawl "complete" without 314 products). Once acknowledged by the worker holding
    it, the page's memory is dropped; a worker whose lease was taken back drops nothing."""
    capped = PageSummary(items=20, ids=tuple(range(1, 21)), prices=(Decimal(1),) * 20,
                         total_count=100, has_next_page=True)
    empty = PageSummary(items=0, total_count=100, has_next_page=False)

    async def scenario() -> list[Any]:
        crawl_id, _ = await cluster.begin_crawl(renew=True, worker_info=None)
        settings = FrontierSettings(reach=100, window=4)
        victim, heir, third = (Frontier(settings, RedisState(cluster, lambda: crawl_id))
                               for _ in range(3))
        (first,) = (await victim.plan([Query(cat_id=7)])).follow
        decided = await victim.on_page(first, capped)
        again = await heir.on_page(first, capped)
        begun = redis_client.hget(cluster.keys.frontier, QUERIES_BEGUN)
        # Another page of the same query, decided once: nothing is remembered for it.
        other = await third.on_page(first.at(3, 5), empty)
        memo = cluster.keys.frontier_page(crawl_id, first.key)
        remembered = redis_client.exists(memo)
        queue, late = cluster.queue(crawl_id, "heir"), cluster.queue(crawl_id, "victim")
        await queue.push([Push("p1", 0, "{}")])
        (lease,) = await late.pop(1)
        await cluster.reap("victim")
        assert (await queue.pop(1))[0].id == lease.id
        await late.ack([lease.id], "{}", [20], [memo])  # too late: kept for the heir
        kept = redis_client.exists(memo)
        await queue.ack([lease.id], "{}", [20], [memo])
        return [decided, again, other, remembered, kept, redis_client.exists(memo), begun]

    decided, again, other, remembered, kept, left, begun = run_with(cluster, scenario)
    assert isinstance(decided, Decision)
    # The split, claimed once: its walk holds the reach, so its window and the page ahead go
    # with its page 1.
    assert {c.query.sort for c in decided.follow} == {"price_up"}
    assert [c.page for c in decided.follow] == [1, 2, 3, 5]
    assert again.follow == decided.follow
    assert (decided.replayed, again.replayed, other.replayed) == (False, True, False)
    assert begun == b"2"  # the planned query and its split, not the split again
    assert (remembered, kept, left) == (1, 1, 0)
