"""The indexes of the products, rejected items and history collections, made when the store
opens: each serves a query named beside it (the catalogue's, the writer's, the movers')."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, IndexModel

from tmapi_crawler.storage.collections import HISTORY, PRODUCTS, REJECTED
from tmapi_crawler.storage.history import HISTORY_INDEXES

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

PRODUCT_INDEXES = [
    IndexModel([("categories", ASCENDING), ("price", ASCENDING)], name="category_price"),
    IndexModel([("categories", ASCENDING), ("free_shipping", ASCENDING), ("price", ASCENDING)],
               name="category_free_shipping_price"),
    IndexModel([("categories", ASCENDING), ("sales_90d", DESCENDING)], name="category_sales"),
    # Catalogue lists (storage.queries): each sort with its ``_id`` tie-break, so that the index
    # gives the order (no in-memory sort) and pages never overlap; a category's price range by
    # sales is read in the index.
    IndexModel([("categories", ASCENDING), ("sales_90d", DESCENDING), ("_id", ASCENDING),
                ("price", ASCENDING)], name="category_sales_id_price"),
    IndexModel([("categories", ASCENDING), ("price", ASCENDING), ("_id", ASCENDING)],
               name="category_price_id"),
    IndexModel([("categories", ASCENDING), ("first_seen", DESCENDING), ("_id", DESCENDING)],
               name="category_first_seen_id"),
    IndexModel([("sales_90d", DESCENDING), ("_id", ASCENDING)], name="sales_id"),
    IndexModel([("price", ASCENDING), ("_id", ASCENDING)], name="price_id"),
    IndexModel([("first_seen", DESCENDING), ("_id", DESCENDING)], name="first_seen_id"),
    IndexModel([("categories", ASCENDING), ("first_crawl_id", ASCENDING)],
               name="category_first_crawl"),
    IndexModel([("price", ASCENDING)], name="price"),
    IndexModel([("sales_90d", DESCENDING)], name="sales"),
    IndexModel([("is_super_factory", ASCENDING), ("sales_90d", DESCENDING)], name="shop_sales"),
    IndexModel([("company_names.zh", ASCENDING)], name="shop_name", sparse=True),
    IndexModel([("last_seen", DESCENDING)], name="last_seen"),
    IndexModel([("first_seen", DESCENDING)], name="first_seen"),
    IndexModel([("last_crawl_id", ASCENDING)], name="last_crawl"),
    IndexModel([("first_crawl_id", ASCENDING)], name="first_crawl"),
    # "At least 15 % below its 90-day average", "at its lowest ever (after a drop)": one
    # index range each (most products never changed: vs_min 1 alone would be most of them).
    IndexModel([("price_stats.vs_avg90", ASCENDING)], name="vs_avg90"),
    IndexModel([("price_stats.vs_min", ASCENDING), ("price_stats.last_change.pct", ASCENDING)],
               name="vs_min_drop"),
]


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    """Make the indexes (MongoDB makes each once; an existing one is left as it is)."""
    # At once, one round trip each: on a new database they were a tenth of start-up (B12).
    await asyncio.gather(
        db[PRODUCTS].create_indexes(PRODUCT_INDEXES),
        db[REJECTED].create_index([("crawl_id", ASCENDING)], name="crawl"),
        db[HISTORY].create_indexes(HISTORY_INDEXES))
