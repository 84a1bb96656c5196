"""One MongoDB connection per crawl, and the patience for a database that restarts.

The connection is journaled (an acknowledged write survives a crash of mongod itself) and
found fast: a MongoDB that does not answer stops the crawl at once, before anything is paid for.
Once open, an operation that meets an unreachable database is retried for
``MONGO_RETRY_TIMEOUT`` seconds (:meth:`Connection._retrying`) before the crawl gives up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from tmapi_crawler.storage import embedded

logger = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """MongoDB did not answer in time, or refused a write for reasons no document caused."""


class Connection:
    """Where MongoDB is, and the connection once :meth:`_connect` made it."""

    def __init__(self, uri: str, database: str, retry_timeout: float) -> None:
        #: Empty: the embedded mongod (``MONGO_EMBEDDED_DIR``), resolved when opened.
        self.uri = uri
        self.database = database
        self.retry_timeout = retry_timeout
        #: ``MONGO_EMBEDDED_DIR`` (None: the embedded module's default).
        self.embedded_dir: str | None = None
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None

    @property
    def opened(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        assert self._db is not None, "ProductStore used before open()"
        return self._db

    async def _connect(
        self,
    ) -> tuple[AsyncMongoClient[dict[str, Any]], AsyncDatabase[dict[str, Any]]]:
        """Connect (starting the embedded mongod if no URI is set); fail fast when MongoDB is
        not there. The caller makes the connection its own once the database is ready."""
        if not self.uri:
            # Left running at the end: other crawls may share it, and queries want it next
            # (`scrapy mongo stop` stops it).
            try:
                server = await asyncio.to_thread(embedded.ensure_running, self.embedded_dir)
            except embedded.EmbeddedMongoError as exc:
                raise StorageUnavailable(f"embedded MongoDB not started: {exc}") from None
            self.uri = server.uri
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.uri, serverSelectionTimeoutMS=5000, tz_aware=True, appname="tmapi-crawler"
        )
        try:
            await client.admin.command("ping")
        except PyMongoError as exc:
            await client.close()
            raise StorageUnavailable(f"MongoDB not reachable: {exc}") from None
        # Journaled writes: an acknowledged batch survives a crash of mongod itself.
        return client, client.get_database(self.database,
                                           write_concern=WriteConcern(w=1, j=True))

    async def close(self) -> None:
        client, self.client, self._db = self.client, None, None
        if client is not None:
            await client.close()

    async def _retrying(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """Retry while MongoDB is unreachable (e.g. restarting), up to ``retry_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_timeout
        delay = 0.1
        while True:
            try:
                return await operation(*args, **kwargs)
            except (ConnectionFailure, OperationFailure) as exc:
                if isinstance(exc, OperationFailure) and not exc.has_error_label(
                    "RetryableWriteError"
                ):
                    raise
                if loop.time() + delay > deadline:
                    raise StorageUnavailable(f"MongoDB unavailable for "
                                             f"{self.retry_timeout:.0f} s: {exc}") from None
                logger.warning("MongoDB unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
