"""A generated catalogue, written straight into MongoDB (no crawl): what a million-product
database looks like to the queries that read it (the web app's B8, the exports' B10).

Documents have the fields and shapes the writer stores (``storage.documents``,
``storage.history``), the indexes it creates, and crawl records: ``crawls`` crawls a day apart,
each of every category; a share of the products changed price in 1 to 10 of them (some in all
ten), each change a ``history`` document. ``raw.<language>`` is left out: no query reads it.
Deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS
from tmapi_crawler.storage.history import HISTORY_INDEXES
from tmapi_crawler.storage.indexes import PRODUCT_INDEXES

BATCH = 10_000
FIRST_CATEGORY = 1001
_WORDS = ("steel", "cotton", "kitchen", "storage", "box", "lamp", "cable", "phone", "case",
          "garden", "tool", "bag", "shoe", "toy", "cup", "glass", "towel", "brush", "hook",
          "rack", "mirror", "clip", "fan", "watch", "ring", "bottle", "pen", "mat", "sock", "hat")
_HANZI = "不锈钢棉厨房收纳盒灯线手机壳花园工具包鞋玩具杯玻璃毛巾刷挂钩架镜夹风扇表戒指瓶笔垫袜帽"


@dataclass(frozen=True)
class Generated:
    products: int
    categories: list[int]
    crawl_ids: list[str]
    #: Products with exactly ``max_changes`` changes (the product page's worst case).
    most_changed: list[int]
    history: int


def crawl_ids(crawls: int, start: datetime) -> list[tuple[str, datetime]]:
    return [(f"{start + timedelta(days=n):%Y%m%dT%H%M%SZ}-{n:06x}", start + timedelta(days=n))
            for n in range(crawls)]


def generate(db: Any, products: int = 1_000_000, categories: int = 50, *,
             changed_share: float = 0.2, max_changes: int = 10, seed: int = 8) -> Generated:
    """Fill ``db`` (a pymongo ``Database``, emptied first) and create the writer's indexes."""
    rng = random.Random(seed)
    for name in (PRODUCTS, HISTORY, CRAWL_RUNS):
        db.drop_collection(name)
    start = datetime(2026, 9, 1, 3, 0, tzinfo=UTC)
    crawls = crawl_ids(max_changes + 1, start)
    cats = [FIRST_CATEGORY + n for n in range(categories)]
    most_changed: list[int] = []
    history_count = 0
    product_batch: list[dict[str, Any]] = []
    history_batch: list[dict[str, Any]] = []
    for product, history in _documents(rng, products, cats, crawls=crawls,
                                           changed_share=changed_share,
                                           max_changes=max_changes):
        product_batch.append(product)
        history_batch.extend(history)
        if len(history) == max_changes:
            most_changed.append(product["_id"])
        if len(product_batch) >= BATCH:
            history_count += _flush(db, product_batch, history_batch)
            product_batch, history_batch = [], []
    history_count += _flush(db, product_batch, history_batch)
    db[CRAWL_RUNS].insert_many([{
        "_id": crawl_id, "spider": "category_items", "started_at": at,
        "finished_at": at + timedelta(hours=2), "finish_reason": "finished", "status": "closed",
        "queries": [{"cat_id": c} for c in cats],
        "counts": {"products_seen": products}, "cost": {"calls": products // 20},
    } for crawl_id, at in crawls])
    db[PRODUCTS].create_indexes(PRODUCT_INDEXES)
    db[HISTORY].create_indexes(HISTORY_INDEXES)
    return Generated(products, cats, [c for c, _ in crawls], most_changed, history_count)


def _flush(db: Any, products: list[dict[str, Any]], history: list[dict[str, Any]]) -> int:
    if products:
        db[PRODUCTS].insert_many(products, ordered=False)
    if history:
        db[HISTORY].insert_many(history, ordered=False)
    return len(history)


def _documents(rng: random.Random, count: int, cats: list[int], *,
               crawls: list[tuple[str, datetime]], changed_share: float, max_changes: int,
               ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    last_id, last_at = crawls[-1]
    for n in range(count):
        item_id = 600_000_000_000 + n * 7919
        category = cats[n % len(cats)]
        price = round(rng.uniform(0.5, 500), 2)
        changed_in = (sorted(rng.sample(range(1, len(crawls)), rng.randint(1, max_changes)))
                      if rng.random() < changed_share else [])
        # A few arrive later (the movers' new arrivals); only products that never changed.
        first = rng.randrange(1, len(crawls)) if not changed_in and rng.random() < 0.02 else 0
        history = []
        for index in changed_in:
            crawl_id, at = crawls[index]
            new = round(price * rng.uniform(0.7, 1.3), 2)
            history.append({"_id": f"{item_id}:{crawl_id}", "item_id": item_id,
                            "crawl_id": crawl_id, "at": at + timedelta(minutes=30),
                            "categories": [category], "changes": {"price": [price, new]}})
            price = new
        words = rng.sample(_WORDS, 4)
        first_id, first_at = crawls[first]
        yield {
            "_id": item_id, "price": price,
            "sale_price": round(price * 0.9, 2) if rng.random() < 0.3 else None,
            "origin_price": price, "moq": rng.choice((1, 2, 5, 10, 50)),
            "sales_90d": int(rng.paretovariate(1.2) * 10), "sales_90d_is_lower_bound": False,
            "repurchase_rate": round(rng.random(), 2), "composite_score": 4.0,
            "shop_years": rng.randint(1, 15),
            "free_shipping": rng.random() < 0.4, "ship_in_48h": rng.random() < 0.5,
            "is_super_factory": rng.random() < 0.1, "is_powerful_seller": rng.random() < 0.2,
            "low_refund_rate": rng.random() < 0.3, "one_piece_min_order": rng.random() < 0.5,
            "product_url": f"https://detail.1688.com/offer/{item_id}.html",
            "img": f"https://cbu01.alicdn.com/img/ibank/{item_id}.jpg", "currency": "CNY",
            "titles": {"en": " ".join(words).capitalize() + f" model {n % 997}",
                       "zh": "".join(rng.sample(_HANZI, 8)) + f"{n % 997}号"},
            "company_names": {"zh": f"义乌{rng.choice(_HANZI)}{n % 5000}贸易有限公司"},
            "categories": [category], "seen_in": {str(category): last_id},
            "first_seen": first_at + timedelta(minutes=30), "first_crawl_id": first_id,
            "last_seen": last_at + timedelta(minutes=30), "last_crawl_id": last_id,
        }, history
