"""Production profile: ``distributed``, tuned for long unattended crawls on several machines.

What it changes over ``distributed``, and why:

* heartbeats every 5 s, a worker declared dead after 60 s: a GC pause, a busy host or a network
  blip must not make the others re-crawl a live worker's pages;
* a permit whose worker stopped renewing it is free after 120 s (it is renewed every 5 s);
* workers wait 300 s for new work before exiting: seeds and stragglers arrive late;
* idle workers look at the queue every 0.5 s: less Redis chatter, same throughput when busy;
* MongoDB batches of 2,000 flushed every 5 s: fewer, larger writes; writes retried for 15 minutes,
  so a database failover or restart does not end the crawl;
* ``MEMUSAGE_WARNING_MB``: a warning before a leak takes a machine down.

``LOG_LEVEL`` stays the base INFO: per-request DEBUG lines cost disk, not insight. ``MONGO_URI``
must point to the shared database (see ``distributed``).
"""

from settings_profiles.distributed import *  # noqa: F403

TMAPI_HEARTBEAT_INTERVAL = 5.0
TMAPI_HEARTBEAT_TTL = 60.0
TMAPI_LEASE_SECONDS = 120.0
MAX_IDLE_TIME_BEFORE_CLOSE = 300
TMAPI_QUEUE_POLL_INTERVAL = 0.5
MONGO_BATCH_SIZE = 500
MONGO_FLUSH_INTERVAL = 5.0
MONGO_RETRY_TIMEOUT = 900.0
MEMUSAGE_WARNING_MB = 2048
