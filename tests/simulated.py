"""Crawls through the frontier in-process, answered by the sandbox's own page builder.

No HTTP and no Scrapy: each "request" is a ``PageContext``, answered by
``Sandbox.listing_body`` exactly as the sandbox would over HTTP. Pages go out in batches of
``concurrency`` (highest priority first, newest first among equals, as Scrapy's scheduler
does) and come back in a shuffled order, so windows, look-ahead pages and late answers are
exercised. Fast enough to check coverage and calls on 30,000-product categories in a test.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tmapi_crawler.frontier.completeness import Loss
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import Decision, FrontierSettings, Note, priority
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.config import SandboxConfig, parse_request
from tmapi_crawler.sandbox.server import Sandbox


@dataclass
class Simulated:
    calls: int = 0
    dropped: int = 0
    lost: int = 0
    pages: list[tuple[str, int]] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    sightings: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    notes: list[Note] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    caps: list[int] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    peak_outstanding: dict[str, int] = field(default_factory=dict)


def answer(sandbox: Sandbox, context: PageContext) -> dict[str, Any]:
    params = dict(context.sent_query.params(context.page))
    data: dict[str, Any] = json.loads(sandbox.listing_body(parse_request(params, None))[0])["data"]
    return data


def summarise(context: PageContext, data: dict[str, Any]) -> tuple[PageSummary, list[ProductItem]]:
    query = context.query
    where = QueryContext(cat_id=query.cat_id, language=query.language, sort=query.sort,
                         filters=query.filters(), page=context.page, position=0)
    items = [ProductItem.from_raw(raw, where) for raw in data["items"]]
    return PageSummary.read(data, items), items


def crawl(config: SandboxConfig, queries: list[Query], *, reach: int | None = 2000,
          window: int = 8, concurrency: int = 8, max_pages: int | None = None, seed: int = 0,
          lose: float = 0.0, frontier: Frontier | None = None) -> Simulated:
    """Crawl ``queries`` to the end; ``lose`` is the share of pages given up on."""
    frontier = frontier or Frontier(FrontierSettings(reach=reach, window=window,
                                                     max_pages=max_pages))
    return asyncio.run(_crawl(Sandbox(config), frontier, queries, concurrency=concurrency,
                              seed=seed, lose=lose))


async def _crawl(sandbox: Sandbox, frontier: Frontier, queries: list[Query], *,
                 concurrency: int, seed: int, lose: float) -> Simulated:
    rng = random.Random(seed)
    result = Simulated()
    queue: list[tuple[int, int, PageContext]] = []
    outstanding: Counter[str] = Counter()
    order = 0

    requested: set[str] = set()
    duplicates: list[PageContext] = []

    def apply(decision: Decision) -> None:
        nonlocal order
        result.counters.update(decision.counters)
        result.notes.extend(decision.notes)
        result.losses.extend(decision.losses)
        result.done.extend(decision.done)
        if decision.cap is not None:
            result.caps.append(decision.cap)
        for context in decision.follow:
            url = f"{context.sent_query.key()}&page={context.page}"
            if url in requested:  # Scrapy's duplicate filter
                result.dropped += 1
                duplicates.append(context)
                continue
            requested.add(url)
            order += 1
            queue.append((priority(context), order, context))
            key = context.query.key()
            outstanding[key] += 1
            result.peak_outstanding[key] = max(result.peak_outstanding.get(key, 0),
                                               outstanding[key])

    apply(await frontier.plan(queries))
    while queue or duplicates:
        while duplicates:
            apply(await frontier.on_dropped(duplicates.pop()))
        if not queue:
            break
        queue.sort(key=lambda entry: (entry[0], entry[1]))
        batch = [queue.pop()[2] for _ in range(min(concurrency, len(queue)))]
        rng.shuffle(batch)
        for context in batch:
            outstanding[context.query.key()] -= 1
            if lose and rng.random() < lose:
                result.lost += 1
                apply(await frontier.on_lost(context))
                continue
            result.calls += 1
            result.pages.append((context.sent_query.key(), context.page))
            summary, items = summarise(context, answer(sandbox, context))
            result.ids.update(i.item_id for i in items if i.item_id is not None)
            result.sightings += len(items)
            apply(await frontier.on_page(context, summary))
    apply(await frontier.at_close())
    return result
