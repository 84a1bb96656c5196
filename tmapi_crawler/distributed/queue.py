"""A reliable version of scrapy-redis's priority queue: popping leases, it does not delete.

scrapy-redis removes a request from Redis when a worker pops it, so a worker that dies loses
everything it had taken. Here ``pop`` atomically moves the request into the worker's lease hash
(``P:S:leases:W``); it leaves Redis only when acknowledged (its page parsed and its products
stored), recorded as failed, or given back to the queue — by the worker itself on a clean stop,
or by the reaper when the worker's heartbeat expired. Every step is one Lua script, so no crash
between two commands can lose or duplicate a request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from scrapy.http import Request
from scrapy.utils.request import request_from_dict
from scrapy_redis.queue import PriorityQueue

from tmapi_crawler.distributed import serializer as json_serializer

if TYPE_CHECKING:
    from redis import Redis
    from scrapy import Spider
    from scrapy_redis.dupefilter import RFPDupeFilter

    from tmapi_crawler.distributed.keys import CrawlKeys

logger = logging.getLogger(__name__)


class ForeignRequest(Exception):
    """A queued request for another address than this worker's API: it would get the token."""

#: ``Request.meta`` key carrying the lease id of a request popped from the shared queue.
#: Copies made for retries keep it, so any of them can acknowledge the page.
LEASE_META = "tmapi_lease"

#: Lua: give one lease back to the queue, or — when delivered ``max`` times already and
#: ``counted`` — record it as failed (a request that kills its workers must not loop forever).
#: A clean give-back (``counted`` false) does not count as a delivery.
LUA_GIVE_BACK = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function give_back(leases, deliveries, failed, queue, id, counted, max, worker, reason)
  local entry = redis.call('HGET', leases, id)
  if not entry then return -1 end
  redis.call('HDEL', leases, id)
  local e = cjson.decode(entry)
  local n
  if counted then
    n = tonumber(redis.call('HGET', deliveries, id) or '0')
  else
    n = redis.call('HINCRBY', deliveries, id, -1)
  end
  if counted and n >= max then
    redis.call('HDEL', deliveries, id)
    redis.call('HSET', failed, id, cjson.encode({reason = reason, at = now(), worker = worker,
                                                 deliveries = n, request = e[2]}))
    return 0
  end
  redis.call('ZADD', queue, e[1], e[2])
  return 1
end
"""

# KEYS: dupefilter, queue. ARGV: fingerprint, score, request.
_PUSH_UNIQUE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS: queue, leases, deliveries. Returns {lease id, request} or nil.
_POP = """
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then return false end
local id = redis.sha1hex(popped[1])
redis.call('HSET', KEYS[2], id, cjson.encode({tonumber(popped[2]), popped[1]}))
redis.call('HINCRBY', KEYS[3], id, 1)
return {id, popped[1]}
"""

# KEYS: leases, deliveries, done. ARGV: lease ids. Returns how many were still leased.
_ACK = """
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('HDEL', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    n = n + 1
  end
end
if n > 0 then redis.call('INCRBY', KEYS[3], n) end
return n
"""

# KEYS: leases, deliveries, failed. ARGV: lease id, reason, worker.
_FAIL = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
local t = redis.call('TIME')
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode({
  reason = ARGV[2], at = tonumber(t[1]) + tonumber(t[2]) / 1000000, worker = ARGV[3],
  deliveries = n, request = cjson.decode(entry)[2]}))
return 1
"""

# KEYS: leases, deliveries, failed, queue. ARGV: counted (0/1), max, worker, reason, ids...
_GIVE_BACK = LUA_GIVE_BACK + """
local requeued, failed = 0, 0
for i = 5, #ARGV do
  local r = give_back(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[i], ARGV[1] == '1',
                      tonumber(ARGV[2]), ARGV[3], ARGV[4])
  if r == 1 then requeued = requeued + 1 elseif r == 0 then failed = failed + 1 end
end
return {requeued, failed}
"""


class ReliablePriorityQueue(PriorityQueue):
    """scrapy-redis's priority queue (a sorted set) with leases, acks and JSON-only decoding.

    ``worker`` is None for a producer that only pushes (``scrapy seed``).
    """

    def __init__(
        self,
        server: Redis,
        spider: Spider,
        key: str,
        serializer: Any = json_serializer,
        *,
        keys: CrawlKeys,
        api_prefix: str,
        worker: str | None = None,
        max_deliveries: int = 5,
    ) -> None:
        super().__init__(server, spider, key, serializer)
        self.keys = keys
        self.api_prefix = api_prefix
        self.worker = worker
        self.max_deliveries = max_deliveries
        self._push_unique = server.register_script(_PUSH_UNIQUE)
        self._pop = server.register_script(_POP)
        self._ack = server.register_script(_ACK)
        self._fail = server.register_script(_FAIL)
        self._give_back = server.register_script(_GIVE_BACK)

    @property
    def _leases_key(self) -> str:
        if self.worker is None:
            raise RuntimeError("a queue opened without a worker id cannot lease requests")
        return self.keys.leases(self.worker)

    def _encode_request(self, request: Request) -> str:
        """The request as JSON, without this worker's lease: a re-queued request is new work."""
        obj = request.to_dict(spider=self.spider)
        obj["meta"] = {k: v for k, v in obj["meta"].items() if k != LEASE_META}
        return str(self.serializer.dumps(obj))

    def _decode_request(self, encoded_request: bytes | str) -> Request:
        """Data only: no request class named by the queue, no private spider method as callback."""
        obj = self.serializer.loads(encoded_request)
        if "_class" in obj:
            raise ValueError("queued request names a class; only plain requests are accepted")
        for name in ("callback", "errback"):
            value = obj.get(name)
            if value is not None and (not isinstance(value, str) or value.startswith("_")):
                raise ValueError(f"queued request has an unusable {name} {value!r}")
        return request_from_dict(obj, spider=self.spider)

    def push_unique(self, request: Request, dupefilter: RFPDupeFilter) -> bool:
        """Mark the request seen and queue it in one step; False if it was seen before.

        scrapy-redis does these as two commands: a worker dying between them would leave a
        request marked seen but never queued, and no later retry could queue it again.
        """
        added = self._push_unique(
            keys=[dupefilter.key, self.key],
            args=[dupefilter.request_fingerprint(request), -request.priority,
                  self._encode_request(request)],
        )
        return bool(added)

    def pop(self, timeout: int = 0) -> Request | None:
        """Lease the most urgent request to this worker (never blocks: ``timeout`` is ignored).

        Raises ``ForeignRequest``, after giving the request back, when its URL is not under this
        worker's ``TMAPI_BASE_URL``: whoever can write to Redis must not be able to make
        workers send their token elsewhere, and a worker configured for another API address
        must not use up the queue.
        """
        popped = self._pop(keys=[self.key, self._leases_key, self.keys.deliveries])
        if not popped:
            return None
        lease, data = popped[0].decode(), popped[1]
        try:
            request = self._decode_request(data)
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("Unusable request in the shared queue (lease %s): %s", lease, exc)
            self.fail(lease, "undecodable")
            return None
        if not request.url.startswith(self.api_prefix):
            self.give_back([lease], counted=False, reason="foreign")
            raise ForeignRequest(f"queued request {request.url} is not for this worker's API "
                                 f"({self.api_prefix}...): check TMAPI_BASE_URL")
        request.meta[LEASE_META] = lease
        return request

    def ack(self, leases: Iterable[str]) -> int:
        """The pages are done; returns how many were still leased to this worker.

        A lease the reaper took back (this worker was thought dead) is not counted: another
        worker may fetch that page again, and storing it again changes nothing.
        """
        ids = list(leases)
        if not ids:
            return 0
        return int(self._ack(keys=[self._leases_key, self.keys.deliveries, self.keys.done],
                             args=ids))

    def fail(self, lease: str, reason: str) -> bool:
        """Record a page given up on for good, with its request, for ``scrapy status``."""
        return bool(self._fail(keys=[self._leases_key, self.keys.deliveries, self.keys.failed],
                               args=[lease, reason, self.worker]))

    def give_back(self, leases: Iterable[str], *, counted: bool, reason: str) -> tuple[int, int]:
        """Return leases to the queue; (requeued, failed as poison). See ``LUA_GIVE_BACK``."""
        ids = list(leases)
        if not ids:
            return 0, 0
        requeued, failed = self._give_back(
            keys=[self._leases_key, self.keys.deliveries, self.keys.failed, self.key],
            args=[int(counted), self.max_deliveries, self.worker, reason, *ids],
        )
        return int(requeued), int(failed)

    def leased_ids(self) -> list[str]:
        return [lease.decode() for lease in self.server.hkeys(self._leases_key)]
