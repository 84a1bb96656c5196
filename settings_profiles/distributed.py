"""Distributed profile: workers anywhere share one crawl through Redis (``REDIS_URL``).

``SCRAPY_PROJECT=distributed scrapy seed category_items -a ...`` queues a crawl;
``SCRAPY_PROJECT=distributed scrapy crawl category_items`` (no arguments) on each machine works
it; ``scrapy status category_items`` shows how far it got. What this changes, and why:

* the queue and dupefilter live in Redis (scrapy-redis's dupefilter, a reliable queue of
  ours): popped entries are leased until their products are stored, so a killed worker loses
  nothing; no worker's exit deletes shared state, and ``scrapy seed`` starts a fresh crawl (new
  crawl id, cleared dupefilter, full concurrency limit) once the previous one is over;
* a queued entry is a page spec (JSON data), never a pickle or a request: each worker rebuilds
  the request itself, so writing to Redis can neither run code nor redirect the token;
* Redis must keep an append-only file (``appendonly yes``): if it loses the crawl, the workers
  stop with the finish reason ``redis_state_lost`` rather than report a crawl with holes;
* the concurrency limit (``TMAPI_CONCURRENCY``) and its 503 adaptation are cluster-wide, and a
  439 (quota) seen by any worker stops them all, keeping the queue for a resume;
* a worker stays while the cluster has queued or leased work, and exits as soon as the crawl
  is complete (a crawl that never had work: after ``MAX_IDLE_TIME_BEFORE_CLOSE`` seconds);
* ``scrapy crawl`` accepts no arguments (a pure worker); with arguments it seeds, then works.

Every worker must use the same ``MONGO_URI``: an embedded MongoDB per machine would split the
data. On one machine, workers without ``MONGO_URI`` and ``REDIS_URL`` share its embedded
MongoDB and embedded Redis, which the first command that needs them starts.
"""

import os

from tmapi_crawler.settings import *  # noqa: F403

#: Marks a shared queue: ``scrapy crawl`` without arguments is a worker, ``scrapy seed`` works.
TMAPI_DISTRIBUTED = True
#: Empty: start (or reuse) the embedded redis-server under REDIS_EMBEDDED_DIR, like MongoDB.
REDIS_URL = os.environ.get("REDIS_URL", "")
#: Every key starts with it (layout in ``tmapi_crawler/distributed/__init__.py``); it also
#: replaces scrapy-redis's SCHEDULER_QUEUE_KEY / SCHEDULER_DUPEFILTER_KEY.
TMAPI_REDIS_PREFIX = os.environ.get("TMAPI_REDIS_PREFIX", "tmapi")

SCHEDULER = "tmapi_crawler.distributed.scheduler.DistributedScheduler"
DUPEFILTER_CLASS = "scrapy_redis.dupefilter.RFPDupeFilter"
TMAPI_LIMITER = "tmapi_crawler.distributed.limiter.RedisLimiter"
TMAPI_BUDGET = "tmapi_crawler.distributed.budget.RedisBudget"
TMAPI_RUN_FINISHER = "tmapi_crawler.distributed.finishing.ClusterFinisher"
#: The frontier's decisions (queries begun, splits, walks, the detected cap) are shared, so the
#: workers decide each once and pay what one process would.
TMAPI_FRONTIER_STATE = "tmapi_crawler.distributed.state.RedisState"

#: Seconds a worker of a crawl that never had work waits for a seed before it exits.
MAX_IDLE_TIME_BEFORE_CLOSE = 30
#: How often a worker says it is alive, and after how long without it the others take its
#: leased requests and permits back.
TMAPI_HEARTBEAT_INTERVAL = 2.0
TMAPI_HEARTBEAT_TTL = 15.0
#: A concurrency permit's lease: a permit its worker stopped renewing (every heartbeat
#: interval) is free after this long, if the worker's heartbeat did not expire first.
TMAPI_LEASE_SECONDS = 90.0
#: Entries a worker leases ahead of its downloader, so it never waits on Redis for work.
TMAPI_QUEUE_PREFETCH = 4
#: How often an idle worker looks for work queued by others (a Lua call; at the crawl's start
#: and end the work others queued waited out this interval: BENCHMARKS.md B5), and a permit
#: waiter re-asks when no release notification came (releases normally wake waiters at once).
TMAPI_QUEUE_POLL_INTERVAL = 0.05
TMAPI_LIMITER_POLL_INTERVAL = 0.1
#: Deliveries after which a request whose workers keep dying is recorded as failed.
TMAPI_MAX_DELIVERIES = 5
