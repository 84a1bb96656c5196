"""What one page of a listing shows and its JSON text, under every switch of `SandboxConfig`.

Pure functions of the configuration, the catalogue and the request (no counters, no HTTP), so a
test can ask for pages without a server, and the server only counts and sends them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tmapi_crawler import api
from tmapi_crawler.sandbox import misbehaviour
from tmapi_crawler.sandbox.catalog import Catalog, Query, withdrawn
from tmapi_crawler.sandbox.config import ListingRequest, SandboxConfig

#: Pages of a `default` listing that show its promoted items first, as public captures do.
PROMOTED_PAGES: Final = frozenset({1, 6, 7, 8, 9, 10})
_STRING_ID = re.compile(r'^\{"item_id":([0-9]+),')


@dataclass(frozen=True, slots=True)
class Layout:
    """A page's place in a listing: `promoted` items first, then results [start, stop)."""

    promoted: int
    start: int
    stop: int
    has_next: bool


def listing_body(config: SandboxConfig, catalog: Catalog,
                 listing: ListingRequest) -> tuple[str, int]:
    """The JSON text of a successful answer and how many items it carries.

    Items are pre-encoded, so only the envelope is built here.
    """
    query, epoch = applied(config, listing.query), config.price_epoch
    results = catalog.results(query, epoch)
    size = listing.page_size
    if config.page_size_limit:
        size = min(size, config.page_size_limit)
    promoted: Sequence[int] = ()
    if config.promoted_slots:
        promoted = catalog.promoted(Query(query.cat_id), epoch, config.promoted_slots)
        layout = Layout(*misbehaviour.slotted_page(
            listing.page, size, len(results), len(promoted), config.result_cap))
    else:
        if config.promoted and query.sort == api.DEFAULT_SORT:
            promoted = catalog.promoted(query, epoch, config.promoted)
        layout = page_layout(listing.page, size, len(results), len(promoted), config.result_cap)
    if config.repeat_last_page and results:
        if layout.start == layout.stop:
            last = last_page(size, len(results), len(promoted), config.result_cap)
            layout = page_layout(last, size, len(results), len(promoted), config.result_cap)
        layout = dataclasses.replace(layout, has_next=True)
    positions = [*promoted[:layout.promoted], *results[layout.start:layout.stop]]
    if config.short_page_rate:
        products = catalog.products(query.cat_id, epoch)
        positions = [i for i in positions
                     if not withdrawn(products[i], config.short_page_rate)]
    items = catalog.items_json(query.cat_id, epoch, listing.language, positions)
    items = _odd_items(config, catalog, query.cat_id, epoch, positions=positions, items=items)
    if config.string_values:
        items = [_STRING_ID.sub(r'{"item_id":"\1",', item, count=1) for item in items]
    total = len(results)
    if config.totals == "capped" and config.result_cap:
        total = min(total, config.result_cap)
    total_text = config.claimed_total or (f'"{total}"' if config.string_values else str(total))
    filters = json.dumps(listing.filters, separators=(",", ":"))
    body = (
        f'{{"code":{api.SUCCESS_CODE},"msg":"success","data":{{"page":{listing.page},'
        f'"page_size":{size},"total_count":{total_text},"keyword":"",'
        f'"sort":"{query.sort}","cat_id":{query.cat_id},'
        f'"filters":{filters},"items":[{",".join(items)}],'
        f'"has_next_page":{"true" if layout.has_next else "false"}}}}}'
    )
    return body, len(items)


def applied(config: SandboxConfig, query: Query) -> Query:
    """The query as the sandbox evaluates it: without prices when it ignores them."""
    if config.ignore_price_filter:
        return dataclasses.replace(query, price_start=None, price_end=None)
    return query


def page_layout(page: int, size: int, results: int, promoted: int, cap: int) -> Layout:
    """Which results a page shows: promoted ones first on PROMOTED_PAGES, then the listing
    from where the previous page left off, up to the cap (counted in served slots)."""
    first = (page - 1) * size
    last = min(page * size, cap) if cap else page * size
    slots = max(0, last - first)
    shown = min(promoted, slots) if page in PROMOTED_PAGES else 0
    start = first - promoted * sum(1 for p in PROMOTED_PAGES if p < page)
    stop = min(start + slots - shown, results)
    if start >= stop:
        return Layout(0, start, start, False)
    return Layout(shown, start, stop, stop < results and (not cap or last < cap))


def last_page(size: int, results: int, promoted: int, cap: int) -> int:
    """The last page that shows any result."""
    page = max(1, -(-results // size))
    if cap:
        page = min(page, -(-cap // size))
    while page_layout(page, size, results, promoted, cap).has_next:
        page += 1
    while page > 1 and page_layout(page, size, results, promoted, cap).stop == \
            page_layout(page, size, results, promoted, cap).start:
        page -= 1
    return page


# Misbehaving answers (sandbox/misbehaviour.py).

def _odd_items(config: SandboxConfig, catalog: Catalog, cat_id: int, epoch: int, *,
               positions: Sequence[int], items: list[str]) -> list[str]:
    """Some products served as odd items, the same ones in every language."""
    if not config.odd_item_rate:
        return items
    products = catalog.products(cat_id, epoch)
    served = list(items)
    for index, position in enumerate(positions):
        kind = misbehaviour.odd_kind(products[position].item_id, config.odd_item_rate,
                                     config.odd_item_kinds)
        if kind is not None:
            served[index] = misbehaviour.odd_item_json(json.loads(items[index]), kind,
                                                       config.huge_item_bytes)
    return served


def odd_truth(config: SandboxConfig, catalog: Catalog, query: Query,
              epoch: int) -> dict[str, str]:
    """``item_id`` -> odd kind, for every result of the query served odd."""
    products = catalog.products(query.cat_id, epoch)
    return {str(product.item_id): kind
            for product in (products[p] for p in catalog.results(query, epoch))
            if (kind := misbehaviour.odd_kind(product.item_id, config.odd_item_rate,
                                              config.odd_item_kinds)) is not None}
