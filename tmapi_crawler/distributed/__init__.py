"""Distributed crawling: workers on any number of machines share one crawl through Redis.

scrapy-redis gives the dupefilter and the shape of the shared priority queue; this package adds
what a paid API needs on top of it:

* ``entries`` — what the queue holds: page specs only, from which each worker rebuilds its
  requests (nothing written to Redis can redirect the token or run code);
* ``queue`` — a *reliable* queue: a popped entry is leased to its worker until its page is
  parsed and every product of it is stored, so a worker killed mid-crawl loses nothing;
* ``scheduler`` — a Scrapy scheduler that never waits on Redis: a prefetched local buffer
  whose requests a factory rebuilds from page specs; ``leases`` — what a worker holds and the
  ordered writer that acknowledges, fails and gives back; ``keeper`` — heartbeats, the reaper
  of dead workers' leases, the detection of a Redis that lost the crawl, and the one moment
  the whole cluster crawl is complete;
* ``limiter`` — one concurrency limit for all workers, at the account's full throughput (permits
  change hands locally), with the cluster-wide stop on an exhausted quota;
* ``cluster``, ``status`` — one process's handle on the shared crawl; what ``scrapy status`` and
  the progress lines show, read at one moment;
* ``state`` — the frontier's state, shared: the cluster decides each query once;
* ``scripts`` and ``lua/`` — every change to shared state is one Lua script.

Redis key layout (``P`` = ``TMAPI_REDIS_PREFIX``, ``S`` = the spider's name, ``W`` = a worker id)::

    P:S:requests        zset    entry ids queued, scored by -priority, then page number
                                (``queue.page_score``)
    P:S:entries         hash    entry id -> JSON {page, priority} (``entries.py``), while queued
                                or leased
    P:S:dupefilter      set     every entry id ever queued in this crawl (scrapy-redis's
                                dupefilter: request fingerprints, unique ones for refetches)
    P:S:crawl           hash    the cluster crawl: id, started_at; completed_at, completed_by
                                once complete; lost, lost_at, missing once Redis lost it;
                                seeding_until (ms) while ``scrapy seed`` is at work on it
    P:S:workers         hash    W -> JSON {host, pid, started_at, last_seen, state, ...}
    P:S:alive:W         string  heartbeat; expires after TMAPI_HEARTBEAT_TTL
    P:S:leases:W        hash    entry id -> score: entries W is working on
    P:S:deliveries      hash    entry id -> times it was handed out (poison guard)
    P:S:done            string  entries acknowledged (page parsed, products stored)
    P:S:failed          hash    entry id -> JSON {reason, at, worker, deliveries, entry}: pages
                                given up on, and entries refused ("refused: ...")
    P:S:progress        hash    W -> JSON progress counters, written with its acknowledgements
                                and failures, with the losses it noticed and the categories of
                                its unfiltered queries (for the crawl's end); a ``scrapy seed``
                                that resumed the crawl is there too (state ``seeded``), with
                                what its replay of the held pages counted and noticed
    P:S:sightings       string  products of the acknowledged pages (each page counted once)
    P:S:frontier        hash    the frontier's numbers and claims (``frontier.state``): queries
                                begun, decided, split; windows, edges, the detected cap; how
                                many queries the crawl began and finished
    P:S:frontier:ids:K  set     ids of a query's last pages (K: the frontier's key), dropped
                                when the query is done
    P:S:frontier:sets   set     names of the id sets, so a new crawl drops them all
    P:S:frontier:step:I hash    what a change to the frontier's state answered, for 10 min, so
                                one sent again after a lost connection is not applied twice
    P:S:frontier:page:C:G hash  each step of the decision about page G (``PageContext.key``) of
                                crawl C, reads included, until the page is acknowledged or
                                failed (7 days at most): a worker that takes the page over from
                                a dead one decides it the same way
    P:limiter:epoch     string  when the limiter's state began (ms, Redis clock)
    P:limiter:permits   zset    permit id (W:n:i) -> lease expiry (ms, Redis clock)
    P:limiter:waiting   zset    W -> when it last asked for permits it did not get (ms)
    P:limiter:limit     string  the shared limit while lowered by 503s (absent: TMAPI_CONCURRENCY)
    P:limiter:successes string  successes since the last change of the limit
    P:limiter:stop      hash    reason, at (ms): the cluster-wide stop (quota exhausted)
    channels P:limiter:released, P:limiter:stopped

Scripts build ``P:S:alive:W``/``P:S:leases:W`` names at run time: one Redis server, not Redis
Cluster (scrapy-redis has the same requirement). The server must keep an append-only file
(``appendonly yes``): workers warn at start when it does not, and stop with
``redis_state_lost`` when Redis lost the crawl.
"""
