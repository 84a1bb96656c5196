"""``scrapy report``: what the last crawl stored, in a few lines."""

from __future__ import annotations

import argparse
from typing import Any

import pymongo
from scrapy.commands import ScrapyCommand

from tmapi_crawler.storage.embedded import resolve_mongo_uri
from tmapi_crawler.storage.store import CRAWL_RUNS, PRODUCTS, REJECTED


class Command(ScrapyCommand):
    requires_project = True
    default_settings = {"LOG_ENABLED": False}

    def short_desc(self) -> str:
        return "Summarise the last crawl run and the products stored in MongoDB"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            resolve_mongo_uri(self.settings), serverSelectionTimeoutMS=5000, tz_aware=True
        )
        with client:
            db = client[self.settings.get("MONGO_DATABASE") or "tmapi"]
            print(summary(db))


def summary(db: Any) -> str:
    run = db[CRAWL_RUNS].find_one(sort=[("started_at", pymongo.DESCENDING)])
    products = db[PRODUCTS]
    lines = [f"database {db.name!r}: {products.estimated_document_count()} products, "
             f"{db[REJECTED].estimated_document_count()} rejected items kept for inspection"]
    if run is not None:
        counts = run.get("counts", {})
        lines.append(
            f"last crawl {run['_id']}: {run.get('finish_reason', 'still running')}, "
            f"{counts.get('pages', 0)} pages, {counts.get('items', 0)} items, "
            f"{counts.get('new', 0)} new and {counts.get('updated', 0)} updated products, "
            f"{counts.get('rejected', 0)} rejected; answers {run.get('answers', {})}"
        )
    by_category = products.aggregate([
        {"$unwind": "$categories"},
        {"$group": {"_id": "$categories", "n": {"$sum": 1}, "min": {"$min": "$price"}}},
        {"$sort": {"n": -1}}, {"$limit": 5},
    ])
    for row in by_category:
        lines.append(f"  category {row['_id']}: {row['n']} products, cheapest {row['min']}")
    cheapest = products.find(
        {"free_shipping": True, "price": {"$ne": None}},
        {"price": 1, "titles": 1}, sort=[("price", pymongo.ASCENDING)], limit=3,
    )
    for doc in cheapest:
        title = next(iter(doc.get("titles", {}).values()), "")
        lines.append(f"  cheapest free-shipping: {doc['_id']} at {doc['price']} CNY  {title}")
    return "\n".join(lines)
