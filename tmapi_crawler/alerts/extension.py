"""The extension that checks the rules once a crawl's end is recorded, and sends what fired.

It runs on ``crawl_recorded``: the run recorder sends it after ``crawl_runs`` holds the crawl's
finish reason (so the exit status is decided too), once per crawl — a local crawl's run, or the
finaliser of a cluster crawl. Whatever happens here (a service down or hanging, MongoDB gone)
is logged and counted, never raised: the crawl's record and exit status stay as they were.

Each change a rule fired on is claimed in ``alerts_sent`` (``_id`` =
``<destination>:<rule>:<change>``, unique) before it is sent, and the claim is dropped again if
the message could not be delivered. A resumed crawl, or a second finaliser, finds the claims
and sends nothing twice; a failed delivery is tried again by the next check of the same crawl.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, PyMongoError
from scrapy.exceptions import NotConfigured

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.alerts.deliver import send
from tmapi_crawler.alerts.evaluate import Change, message, read_changes, select
from tmapi_crawler.alerts.rules import AlertsConfig, Rule, destination_key, load, service_of
from tmapi_crawler.storage.collections import ALERTS_SENT, CRAWL_RUNS
from tmapi_crawler.storage.store import ProductStore

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

_DUPLICATE_KEY: Final = 11000


@dataclass(slots=True)
class Outcome:
    """What one check sent: messages delivered and not, products listed, changes skipped."""

    sent: int = 0
    failed: int = 0
    products: int = 0
    already_sent: int = 0


@dataclass(frozen=True, slots=True)
class _Pending:
    url: str
    rule: Rule
    changes: list[Change]
    keys: list[str]


async def _claim(db: AsyncDatabase[dict[str, Any]], crawl_id: str, rule: Rule, service: str,
                 keyed: dict[str, Change]) -> list[str]:
    """The keys of ``keyed`` nobody sent (or is sending) yet, now ours, in their order."""
    if not keyed:
        return []
    now = datetime.now(UTC)
    documents = [{"_id": key, "crawl_id": crawl_id, "rule": rule.key, "service": service,
                  "item_id": change.item_id, "at": now} for key, change in keyed.items()]
    taken: set[str] = set()
    try:
        await db[ALERTS_SENT].insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != _DUPLICATE_KEY for error in errors):
            raise
        taken = {documents[error["index"]]["_id"] for error in errors}
    return [key for key in keyed if key not in taken]


async def check_crawl(db: AsyncDatabase[dict[str, Any]], crawl_id: str, config: AlertsConfig,
                      timeout: float) -> Outcome:
    """Evaluate every rule over the crawl's changes and send each rule's one message to every
    destination, within ``timeout`` seconds for all deliveries together."""
    await db[ALERTS_SENT].create_index([("crawl_id", ASCENDING)], name="crawl")
    changes = await read_changes(db, crawl_id, {rule.kind for rule in config.rules})
    outcome = Outcome()
    pending: list[_Pending] = []
    for rule in config.rules:
        hits = select(rule, changes)
        for url in config.notify:
            keyed = {f"{destination_key(url)}:{rule.key}:{c.key}": c for c in hits}
            mine = await _claim(db, crawl_id, rule, service_of(url), keyed)
            outcome.already_sent += len(keyed) - len(mine)
            if mine:
                pending.append(_Pending(url, rule, [keyed[k] for k in mine], mine))
    if not pending:
        return outcome
    messages = [(p.url, *message(p.rule, crawl_id, p.changes)) for p in pending]
    delivered = await asyncio.to_thread(send, messages, timeout)
    for item, ok in zip(pending, delivered, strict=True):
        if ok:
            outcome.sent += 1
            outcome.products += len(item.changes)
            continue
        outcome.failed += 1
        logger.warning("Alert %r (line %d) to %s not delivered within %g s: its %d "
                       "change(s) stay unsent", item.rule.kind, item.rule.line,
                       service_of(item.url), timeout, len(item.changes))
        await db[ALERTS_SENT].delete_many({"_id": {"$in": item.keys}})
    return outcome


class AlertsExtension:
    """Configured by ``TMAPI_ALERTS_FILE``; off (``NotConfigured``) without it."""

    def __init__(self, crawler: Crawler, config: AlertsConfig) -> None:
        self.crawler = crawler
        self.config = config
        self.timeout = crawler.settings.getfloat("TMAPI_ALERTS_TIMEOUT")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> AlertsExtension:
        path = crawler.settings.get("TMAPI_ALERTS_FILE")
        if not path:
            raise NotConfigured("TMAPI_ALERTS_FILE is not set")
        extension = cls(crawler, load(path))
        crawler.signals.connect(extension.crawl_recorded, signal=tmapi_signals.crawl_recorded)
        return extension

    async def crawl_recorded(self, crawl_id: str, final: bool) -> None:
        if not final:
            return
        store = ProductStore.of(self.crawler)
        try:
            outcome = await check_crawl(store.db, crawl_id, self.config, self.timeout)
            if outcome.sent or outcome.failed:
                await store.db[CRAWL_RUNS].update_one({"_id": crawl_id}, {"$inc": {
                    "alerts.sent": outcome.sent, "alerts.failed": outcome.failed}})
        except PyMongoError as exc:
            logger.error("Alerts of crawl %s not checked: MongoDB: %s", crawl_id, exc)
            return
        stats = self.crawler.stats
        stats.set_value(stats_keys.ALERTS_SENT, outcome.sent)
        stats.set_value(stats_keys.ALERTS_FAILED, outcome.failed)
        stats.set_value(stats_keys.ALERTS_PRODUCTS, outcome.products)
        stats.set_value(stats_keys.ALERTS_ALREADY_SENT, outcome.already_sent)
        logger.info("Alerts of crawl %s: %d message(s) sent, %d failed, %d change(s) sent "
                    "before", crawl_id, outcome.sent, outcome.failed, outcome.already_sent)
