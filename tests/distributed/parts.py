"""One worker's parts in-process on a real redis-server, for the tests of the distributed
scheduler's leases, keeper and adapter (``test_cluster_leases.py``, ``test_cluster_keeper.py``,
``test_cluster_scheduler.py``): no subprocess, no reactor — each test runs its own asyncio loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from scrapy import Request
from scrapy.utils.test import get_crawler

from tests.cluster import cluster_settings
from tests.crawling import TOKEN
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.distributed.leases import Leases
from tmapi_crawler.distributed.queue import SharedQueue, page_push
from tmapi_crawler.frontier.context import LEASE_META, PageContext
from tmapi_crawler.plan import Query
from tmapi_crawler.spiders.category_items import CategoryItemsSpider


class Part:
    """One worker's parts in-process, on a real redis-server: its cluster handle, a crawl it
    joined, and its queue; ``seed`` queues page specs as ``scrapy seed`` would."""

    def __init__(self, redis_uri: str, **settings: Any) -> None:
        self.crawler = get_crawler(CategoryItemsSpider, dict(cluster_settings(
            redis_uri, TWISTED_REACTOR_ENABLED=False, ITEM_PIPELINES={}, EXTENSIONS={},
            TMAPI_TOKEN=TOKEN, **settings)))
        self.spider = CategoryItemsSpider.from_crawler(self.crawler)
        self.cluster = Cluster(self.crawler.settings, "category_items")
        self.keys = self.cluster.keys
        self.crawl_id = ""
        self.queue: SharedQueue | None = None

    async def join(self) -> SharedQueue:
        self.crawl_id, _ = await self.cluster.begin_crawl(
            renew=False, worker_info=self.cluster.worker_info("running"))
        self.queue = self.cluster.queue(self.crawl_id, self.cluster.worker_id)
        return self.queue

    async def seed(self, *pages: int) -> list[PageContext]:
        """Queue pages of category 1; their contexts, in the order the queue hands them out."""
        assert self.queue is not None
        contexts = [PageContext(Query(cat_id=1), page=p, last=len(pages)) for p in pages]
        producer = self.cluster.queue(self.crawl_id, None)
        await producer.push([page_push(self.spider.page_request(c), self.cluster.dupefilter)
                             for c in contexts])
        return contexts

    def leases(self, **callbacks: Callable[..., Any]) -> Leases:
        return Leases(self.crawler, self.cluster, **{
            "snapshot": lambda state: json.dumps({"state": state}),
            "pushed": lambda: None, "lost": lambda: None, **callbacks})

    def stat(self, key: str) -> Any:
        return self.crawler.stats.get_value(key)


def leased(client: redis.Redis, part: Part) -> set[str]:
    return {k.decode() for k in client.hkeys(part.keys.leases(part.cluster.worker_id))}


def lease_request(part: Part, context: PageContext, lease: str) -> Request:
    request = part.spider.page_request(context)
    request.meta[LEASE_META] = lease
    return request
