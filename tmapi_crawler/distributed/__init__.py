"""Distributed crawling: workers on any number of machines share one crawl through Redis.

scrapy-redis gives the shared priority queue and dupefilter; this package adds what a paid API
needs on top of it:

* ``queue`` — a *reliable* queue: a popped request is leased to its worker until its page is
  parsed and every product of it is stored, so a worker killed mid-crawl loses nothing;
* ``scheduler`` — scrapy-redis's scheduler made fit for Scrapy 2.19 and for many workers: the
  acknowledgement ledger, heartbeats, the reaper of dead workers' leases, and a worker lifetime
  bounded by the whole cluster's work rather than its own;
* ``limiter`` — one concurrency limit for all workers (a lease-based semaphore), with the
  cluster-wide stop on an exhausted quota;
* ``serializer`` — requests stored as JSON data, never pickles.

Redis key layout (``P`` = ``TMAPI_REDIS_PREFIX``, ``S`` = the spider's name, ``W`` = a worker id)::

    P:S:requests        zset    queued requests (JSON), scored by -priority (scrapy-redis)
    P:S:dupefilter      set     fingerprints of every request ever queued (scrapy-redis)
    P:S:crawl           hash    the cluster crawl: id, started_at
    P:S:workers         hash    W -> JSON {host, pid, started_at, last_seen, state, ...}
    P:S:alive:W         string  heartbeat; expires after TMAPI_HEARTBEAT_TTL
    P:S:leases:W        hash    lease id -> JSON [score, request]: requests W is working on
    P:S:deliveries      hash    lease id -> times the request was handed out (poison guard)
    P:S:done            string  requests acknowledged (page parsed, products stored)
    P:S:failed          hash    lease id -> JSON {reason, at, worker, deliveries, request}
    P:S:progress        hash    W -> JSON progress snapshot (``tmapi_crawler.progress``);
                                expires a day after the last write
    P:limiter:permits   zset    permit id (W:n:i) -> lease expiry (ms, Redis clock)
    P:limiter:limit     string  the shared limit while lowered by 503s (absent: TMAPI_CONCURRENCY)
    P:limiter:successes string  successes since the last change of the limit
    P:limiter:stop      hash    reason, at (ms): the cluster-wide stop (quota exhausted)
    channels P:limiter:released, P:limiter:stopped

A lease id is the SHA-1 of the queued request's JSON, so it is the same whoever pops it. Scripts
build ``P:S:alive:W``/``P:S:leases:W`` names at run time: one Redis server, not Redis Cluster
(scrapy-redis has the same requirement).
"""
