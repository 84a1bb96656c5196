"""The resume's replay, in-process: the frontier replayed over the pages a crawl held before
its interruption asks for exactly the pages it had not fetched, and nothing twice."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.simulated import answer, summarise
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import FrontierSettings
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.replay import HeldPage, replay
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.config import SandboxConfig
from tmapi_crawler.sandbox.server import Sandbox
from tmapi_crawler.storage.ledger import planned_key

CAT = 9001
QUERIES = [Query(cat_id=CAT), Query(cat_id=CAT, language="ru")]


def frontier() -> Frontier:
    return Frontier(FrontierSettings(reach=2000, window=5))


async def _crawl(sandbox: Sandbox, queue: list[PageContext], f: Frontier, *, seed: int,
                 stop_after: int | None = None) -> tuple[list[tuple[str, HeldPage]], set[int]]:
    """Fetch (from the sandbox) in a random order; the pages fetched in order, the products."""
    rng = random.Random(seed)
    fetched: list[tuple[str, HeldPage]] = []
    products: set[int] = set()
    while queue and (stop_after is None or len(fetched) < stop_after):
        context = queue.pop(rng.randrange(len(queue)))
        summary, items = summarise(context, answer(sandbox, context))
        products.update(i.item_id for i in items if i.item_id is not None)
        fetched.append((context.key, HeldPage(context, summary, 1)))
        queue.extend((await f.on_page(context, summary)).follow)
    return fetched, products


@pytest.mark.parametrize("stop_after", [1, 7, 40])
@pytest.mark.parametrize("config", [
    {"sizes": {CAT: 4500}, "totals": "capped", "short_page_rate": 0.03},
    {"sizes": {CAT: 230}},
], ids=["capped-and-split", "small"])
def test_a_resume_fetches_what_was_missing_and_nothing_twice(
    config: dict[str, Any], stop_after: int
) -> None:
    async def main() -> None:
        sandbox = Sandbox(SandboxConfig(**config))
        whole = frontier()
        everything, truth = await _crawl(sandbox, list((await whole.plan(QUERIES)).follow),
                                         whole, seed=3)
        first = frontier()
        held, _ = await _crawl(sandbox, list((await first.plan(QUERIES)).follow), first,
                               seed=3, stop_after=stop_after)
        resumed = frontier()
        replayed = await replay(resumed, await resumed.plan(QUERIES), dict(held))
        assert replayed.held == len(held)
        assert replayed.saved == len(held)
        rest, products = await _crawl(sandbox, list(replayed.left), resumed, seed=5)
        stored = {key for key, _ in held}
        again = [key for key, _ in rest if key in stored]
        assert again == []
        assert stored | {key for key, _ in rest} == {key for key, _ in everything}
        before = {i.item_id for _, page in held
                  for i in summarise(page.context, answer(sandbox, page.context))[1]}
        assert before | products == truth

    asyncio.run(main())


def test_a_page_is_filed_under_the_planned_query_it_descends_from() -> None:
    planned = [Query(cat_id=5), Query(cat_id=5, sort="sales"),
               Query(cat_id=5, price_start="10", price_end="20")]
    split = PageContext(Query(cat_id=5, price_start="12.5", price_end="15"), page=3, depth=2)
    assert planned_key(split, planned) == planned[0].key()
    cell = PageContext(Query(cat_id=5, sort="sales", price_start="9.9", price_end="9.9"))
    assert planned_key(cell, planned) == planned[1].key()
    narrow = PageContext(Query(cat_id=5, price_start="10", price_end="20"))
    assert planned_key(narrow, planned[2:]) == planned[2].key()
    assert planned_key(PageContext(Query(cat_id=6)), planned) == Query(cat_id=6).key()
    # A walk, a flag cell and a sort cell of a flag cell: all the unfiltered query's pages.
    walk = PageContext(Query(cat_id=5, sort="price_up", price_start="9.91"), page=2, depth=1)
    assert planned_key(walk, planned[:1]) == planned[0].key()
    flagged = Query(cat_id=5, price_start="9.9", price_end="9.9", new_arrival=True)
    assert planned_key(PageContext(flagged, depth=3), planned[:1]) == planned[0].key()
    sorted_cell = PageContext(Query(cat_id=5, sort="price_down", price_start="9.9",
                                    price_end="9.9", new_arrival=False, free_shipping=True))
    assert planned_key(sorted_cell, planned[:1]) == planned[0].key()
    # Where the plan has the cell's flags itself, the closer planned query takes the page.
    with_flag = Query(cat_id=5, new_arrival=True)
    assert planned_key(PageContext(flagged), [planned[0], with_flag]) == with_flag.key()
    assert planned_key(PageContext(Query(cat_id=5, new_arrival=False)),
                       [planned[0], with_flag]) == planned[0].key()
