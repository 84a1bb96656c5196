"""The answer spool: a page paid for is durable in MongoDB before the next call starts.

The resume ledger (``storage.ledger``) records a page once its products are stored, so a
SIGKILL between the answer and that write would make a resume pay for the page again. The
transport therefore keeps every successful answer in ``crawl_answers`` before it releases the
call's permit (``keep``): at every instant, the pages paid for but not durable in MongoDB are at
most the calls in flight (``TMAPI_CONCURRENCY``), without holding the permit through parsing
and storing. The ledger drops a page's answer once it recorded the page (``drop``); a finished
crawl drops what is left (``finish``).

A resumed crawl asks the spool before paying (``answer``): an answer it holds is handed back
free. Only pages that may be there are looked up, off the permit path: those spooled by the
crawl's earlier runs (their keys are loaded at open, by a local resume and by every cluster
worker), and in a cluster the pages the queue delivers again (``may_hold``: the worker that had
one may have paid for it before it died). Looking up every page cost a cluster worker one
acknowledged MongoDB read per page, most of it at the crawl's start (B5 in BENCHMARKS.md).

The spool never stalls the crawl: each write or look-up is one attempt bounded by
``TIMEOUT``; a failure is counted and warned about once, and the page is merely unprotected.

``keep`` writes unacknowledged (``w=0``): it returns once the bytes are handed to the socket,
and a SIGKILL of the crawler does not lose them (the kernel still delivers them and mongod
applies the insert; only a crash of mongod or the machine could, and then the page is merely
paid for again). Waiting for MongoDB's answer held the permit ~1 ms longer per call. A refusal
(by a validator, say) is therefore seen when the ledger drops the pages: fewer answers
deleted than were sent. Its bound is ``asyncio.timeout``, not ``pymongo.timeout``: under the
latter even an unacknowledged insert yields to the event loop three times, each behind the
answers being parsed (B1 lost ~0.6 point); under the former it does not yield at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from bson import Binary
from pymongo import ASCENDING, WriteConcern
from pymongo.errors import ConnectionFailure, PyMongoError

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.per_crawler import PerCrawler
from tmapi_crawler.quoting import shown
from tmapi_crawler.storage.collections import SPOOL

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Bodies larger than this are not kept: a MongoDB document holds at most 16 MB.
MAX_BODY: Final = 15 * 2**20
#: Seconds one spool write or look-up may take (client-side operation timeout).
TIMEOUT: Final = 1.0
#: Seconds the spool keeps nothing after MongoDB did not answer in time: an unreachable
#: database costs each call at most one ``TIMEOUT`` every ``PAUSE`` seconds, not every call.
PAUSE: Final = 10.0
#: ``keep``'s write concern: handed to the socket, not waited for (see the module's docstring).
UNACKNOWLEDGED: Final = WriteConcern(w=0)

_SPOOLS: PerCrawler[Spool] = PerCrawler()


class Spool:
    """One crawl's answer spool, shared by the transport (keeps, replays), the ledger (drops)
    and the run recorder (drops the rest of a finished crawl). Inert until :meth:`open`."""

    def __init__(self, crawler: Crawler) -> None:
        self.stats = crawler.stats
        self.crawl_id: str | None = None
        self._answers: AsyncCollection[dict[str, Any]] | None = None
        #: The same collection, written without waiting for MongoDB's answer (``keep``).
        self._unacknowledged: AsyncCollection[dict[str, Any]] | None = None
        #: ``_id`` of a page of this crawl: this prefix and the page's key.
        self._prefix = ""
        #: Keys of the answers this run sent (or was handed back) that the ledger has not
        #: dropped yet: a drop that deletes fewer was refused (``w=0`` shows nothing).
        self._sent: set[str] = set()
        #: Keys of the pages that may be here: spooled by the interrupted runs, or delivered
        #: again in a cluster (``may_hold``).
        self._held: set[str] = set()
        self._paused_until = 0.0
        self._warned = False

    @classmethod
    def of(cls, crawler: Crawler) -> Spool:
        return _SPOOLS.made(crawler, lambda: cls(crawler))

    @property
    def replaying(self) -> bool:
        """Whether a page about to be paid for may have its answer here."""
        return bool(self._held)

    async def open(self, db: AsyncDatabase[dict[str, Any]], crawl_id: str, *, resumed: bool,
                   distributed: bool) -> None:
        """Spool the answers of crawl ``crawl_id``; a resume loads what its runs spooled."""
        answers = db[SPOOL]
        try:
            await answers.create_index([("crawl_id", ASCENDING)], name="crawl")
            held: set[str] = set()
            if resumed or distributed:
                prefix = len(self._id(crawl_id, ""))
                async for doc in answers.find({"crawl_id": crawl_id}, {"_id": 1}):
                    held.add(doc["_id"][prefix:])
        except PyMongoError as exc:
            logger.warning("The answer spool is off (%s): a page paid for but not stored at a "
                           "kill will be paid for again by a resume", shown(str(exc)))
            return
        self._answers, self.crawl_id = answers, crawl_id
        self._unacknowledged = answers.with_options(write_concern=UNACKNOWLEDGED)
        self._prefix = self._id(crawl_id, "")
        self._held = held
        if held:
            logger.info("Answer spool: %d answers paid for and not stored yet are there; "
                        "their pages are not paid for again", len(held))

    @staticmethod
    def _id(crawl_id: str, key: str) -> str:
        return f"{crawl_id}:{key}"

    async def keep(self, key: str, page: Mapping[str, Any], body: bytes, *, status: int,
                   encoding: str, calls: int) -> None:
        """Send a successful answer (``body``: decoded, token-free) before its permit goes.

        ``key``: the page's ``PageContext.key``; ``page``: its plain record, stored as is."""
        unacknowledged = self._unacknowledged
        if unacknowledged is None:
            return
        if len(body) > MAX_BODY:
            self.stats.inc_value(stats_keys.SPOOL_TOO_LARGE)
            return
        if asyncio.get_running_loop().time() < self._paused_until:
            self.stats.inc_value(stats_keys.SPOOL_NOT_KEPT)
            return
        try:
            async with asyncio.timeout(TIMEOUT):
                await unacknowledged.insert_one({
                    "_id": self._prefix + key, "crawl_id": self.crawl_id, "page": page,
                    "body": Binary(body), "status": status, "encoding": encoding,
                    "calls": calls, "at": datetime.now(UTC)})
        except (PyMongoError, TimeoutError) as exc:
            self.stats.inc_value(stats_keys.SPOOL_NOT_KEPT)
            if not isinstance(exc, PyMongoError) or exc.timeout or isinstance(
                    exc, ConnectionFailure):
                self._paused_until = asyncio.get_running_loop().time() + PAUSE
            self._warn(shown(str(exc)))
            return
        self._sent.add(key)
        self.stats.inc_value(stats_keys.SPOOL_KEPT)

    def holds_unrecorded(self, key: str) -> bool:
        """Whether this run spooled page ``key``'s answer and the ledger has not recorded it."""
        return key in self._sent

    def may_hold(self, key: str) -> None:
        """Page ``key`` was delivered again by the cluster's queue: look it up before paying."""
        if self._answers is not None:
            self._held.add(key)

    async def answer(self, key: str) -> Mapping[str, Any] | None:
        """The spooled answer of page ``key`` of this crawl, if any (see ``replaying``)."""
        if self._answers is None or key not in self._held:
            return None
        try:
            async with asyncio.timeout(TIMEOUT):
                document = await self._answers.find_one({"_id": self._prefix + key})
        except (PyMongoError, TimeoutError) as exc:
            self._warn(shown(str(exc)))
            return None
        self._held.discard(key)
        if document is not None:
            self._sent.add(key)
        return document

    async def drop(self, keys: Iterable[str]) -> None:
        """The ledger recorded these pages: their answers need not be kept any longer.

        Those this run sent but MongoDB does not hold were not kept (refused: ``keep`` does
        not wait to see it) and are counted as such."""
        if self._answers is None:
            return
        keys = set(keys)
        if not keys:
            return
        sent = keys & self._sent
        self._sent -= sent
        try:
            result = await self._answers.delete_many(
                {"_id": {"$in": [self._prefix + key for key in keys]}})
        except PyMongoError as exc:  # left over: never read again, dropped when it finishes
            logger.warning("Could not drop %d answers from the spool: %s", len(keys),
                           shown(str(exc)))
            return
        missing = len(sent) - result.deleted_count
        if missing > 0:
            self.stats.inc_value(stats_keys.SPOOL_NOT_KEPT, missing)
            self._warn(f"{missing} of the {len(sent)} answers sent for pages the ledger "
                       "recorded were not there")

    async def finish(self) -> None:
        """The crawl finished: nothing of it will be resumed."""
        if self._answers is None or self.crawl_id is None:
            return
        try:
            await self._answers.delete_many({"crawl_id": self.crawl_id})
        except PyMongoError as exc:
            logger.warning("Could not empty the answer spool of crawl %s: %s", self.crawl_id,
                           shown(str(exc)))

    def _warn(self, why: str) -> None:
        """``why``: already free of the token (``shown``)."""
        if self._warned:
            logger.debug("Answer spool: %s", why)
            return
        self._warned = True
        logger.warning("MongoDB did not keep an answer in the spool (%s): the crawl goes on; "
                       "a page paid for but not stored at a kill may be paid for again "
                       "(further failures are counted in %s)", why, stats_keys.SPOOL_NOT_KEPT)
