"""The frontier's state shared by every worker of a cluster crawl, in Redis.

With it, the cluster decides each thing once, as one process would: a query is started, split
or walked by the first worker that claims it, the detected result cap and the price edges are
one value for all, and the ids of a query's last pages are one set. So N workers pay what one
process pays. Each operation is one step of ``lua/frontier.lua``, checked against the crawl
id: a worker left from an earlier crawl cannot touch a new crawl's decisions, and a new crawl
starts with none (``begin.lua`` drops them). While Redis does not answer, the decisions wait
for it (a restart with an append-only file loses nothing).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import redis

from tmapi_crawler.distributed.cluster import Cluster, Outage
from tmapi_crawler.distributed.queue import CrawlGone

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


#: How long a step's answer is remembered for a step sent again after a lost connection.
STEP_MEMO_SECONDS: Final = 600
#: A page's decision is remembered until the page is acknowledged; this only bounds what a
#: page that never is (its crawl abandoned) leaves in Redis.
PAGE_MEMO_SECONDS: Final = 7 * 24 * 3600


class RedisState:
    """``frontier.state.FrontierState`` for a cluster crawl (``TMAPI_FRONTIER_STATE``)."""

    def __init__(self, cluster: Cluster, crawl_id: Callable[[], str | None],
                 page: str | None = None) -> None:
        self.cluster = cluster
        self._crawl_id = crawl_id
        self._page = page
        self._steps = 0
        self._replayed = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisState:
        """The crawl id is the distributed scheduler's, known once it joined the crawl."""
        return cls(Cluster.of(crawler),
                   lambda: getattr(crawler.engine.scheduler, "crawl_id", None))

    def for_page(self, page: str) -> RedisState:
        """Each step of a decision about ``page`` is remembered under the page and its place
        in the decision, reads included: the page decided again (by the worker that takes
        over its lease) sees what the first decision saw and asks for the same pages."""
        return RedisState(self.cluster, self._crawl_id, page)

    @property
    def replayed(self) -> bool:
        return self._replayed

    def _memo(self, crawl_id: str, operation: str, keys: list[str]) -> tuple[str, str, int]:
        """Where this step's answer is remembered: (memo key, field, seconds)."""
        base = self.cluster.keys
        if self._page is None:
            return base.frontier_step(secrets.token_hex(8)), "step", STEP_MEMO_SECONDS
        self._steps += 1
        return (base.frontier_page(crawl_id, self._page),
                f"{self._steps}:{operation}:{keys[0] if keys else ''}", PAGE_MEMO_SECONDS)

    async def _call(self, operation: str, keys: list[str], values: Iterable[Any] = ()
                    ) -> int | None:
        """One step, sent again while Redis does not answer (a restart): the frontier's
        decisions wait for it, as the queue's writes do. A step sent again answers as it did
        when it was applied (``frontier.lua`` remembers it)."""
        crawl_id = self._crawl_id()
        if crawl_id is None:
            raise RuntimeError("the Redis frontier state needs the distributed scheduler "
                               "(SCRAPY_PROJECT=distributed)")
        base = self.cluster.keys
        memo, step, seconds = self._memo(crawl_id, operation, keys)
        id_sets = [base.frontier_ids(key) for key in keys] if operation in (
            "add_ids", "forget") else []
        call = {
            "keys": [base.crawl, base.frontier, base.frontier_sets, memo, *id_sets],
            "args": [crawl_id, step, seconds, int(self._page is not None), operation, *keys,
                     *values],
        }
        outage = Outage("the frontier's shared state")
        sent = False
        while True:
            try:
                result = await self.cluster.scripts["frontier"](**call)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                sent = True
                await outage.failed(exc)
                continue
            outage.succeeded()
            break
        if not result[0]:
            raise CrawlGone(crawl_id)
        if result[1] and not sent:
            self._replayed = True
        return int(result[2]) if len(result) > 2 else None

    async def claim(self, key: str) -> bool:
        return bool(await self._call("claim", [key]))

    async def get(self, key: str) -> int | None:
        return await self._call("get", [key])

    async def add(self, key: str, amount: int) -> int:
        return int(await self._call("add", [key], [amount]) or 0)

    async def raise_to(self, key: str, value: int) -> int | None:
        return await self._call("raise_to", [key], [value])

    async def lower_to(self, key: str, value: int) -> int | None:
        return await self._call("lower_to", [key], [value])

    async def add_ids(self, key: str, ids: Iterable[int]) -> int:
        return int(await self._call("add_ids", [key], ids) or 0)

    async def forget(self, *keys: str) -> None:
        if keys:
            await self._call("forget", list(keys))


class ReplayState(RedisState):
    """The state ``scrapy seed`` replays a resumed crawl's held pages on (``storage.ledger``).

    No page's decision is remembered under the page: a held page is never decided again, and a
    memo left from the lost crawl (same crawl id) must not answer for the replay. Every step is
    remembered in one hash of this seed's, for a step sent again after a lost connection.
    """

    def __init__(self, cluster: Cluster, crawl_id: str) -> None:
        super().__init__(cluster, lambda: crawl_id)
        self._session = cluster.keys.frontier_step(f"seed-{secrets.token_hex(8)}")

    def for_page(self, page: str) -> RedisState:
        return self

    def _memo(self, crawl_id: str, operation: str, keys: list[str]) -> tuple[str, str, int]:
        self._steps += 1
        return self._session, str(self._steps), STEP_MEMO_SECONDS
