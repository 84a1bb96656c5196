"""B10: ``scrapy export`` of a million stored products, beside a bare pymongo loop.

The database is generated (no crawl of a million products): a pool of real documents, made by
the writer's own functions from the sandbox catalogue in two languages, repeated with new ids,
prices, titles, categories, times and a vanished mark on one product in fifty.

The bare loop (``tests/benchmarks/bare_export.py``) reads the same fields with
``find`` and writes them with ``csv.writer``: the same file, byte for byte (checked), without
the project's query functions, records or Scrapy's exporter. Whatever the export spends above
it is their price.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymongo

from tmapi_crawler.exporters import FLAG_FIELDS, LINK_FIELDS, PRICE_FIELDS, SHOP_FIELDS
from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.sandbox.catalog import Catalog, build_item
from tmapi_crawler.storage.documents import updates_by_id

if TYPE_CHECKING:
    from tests.benchmarks.run import Bench

LANGUAGES = ("en", "zh")
POOL_CATEGORIES = range(201, 221, 2)
POOL_SIZE = 200
PRODUCTS = 1_000_000
INSERT_BATCH = 5_000


def _nested(fields: dict[str, Any]) -> dict[str, Any]:
    """``{"titles.en": x}`` as ``{"titles": {"en": x}}``, as MongoDB stores a ``$set``."""
    document: dict[str, Any] = {}
    for key, value in fields.items():
        head, _, tail = key.partition(".")
        if tail:
            document.setdefault(head, {})[tail] = value
        else:
            document[head] = value
    return document


def pool() -> list[dict[str, Any]]:
    """Real stored products: the writer's documents for the catalogue's, in two languages."""
    catalog = Catalog(sizes=dict.fromkeys(POOL_CATEGORIES, POOL_SIZE))
    now = datetime(2026, 11, 1, tzinfo=UTC)
    documents = []
    for cat_id in POOL_CATEGORIES:
        items = [ProductItem.from_raw(build_item(product, language),
                                      QueryContext(cat_id, language, "default", {}, 1, n))
                 for n, product in enumerate(catalog.products(cat_id)) for language in LANGUAGES]
        for update in updates_by_id(items, "20261101T000000Z-pool", now).values():
            documents.append({**_nested(update["$set"]), **update["$setOnInsert"],
                              "categories": update["$addToSet"]["categories"]["$each"]})
    return documents


def generated(count: int) -> Iterator[dict[str, Any]]:
    """``count`` products, each a pool document with its own id, price, titles and times."""
    templates = pool()
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for n in range(count):
        document = dict(templates[n % len(templates)])
        document["_id"] = 500_000_000_000 + n
        document["price"] = round((document["price"] or 1.0) * (1 + n % 97 / 100), 2)
        document["titles"] = {lang: f"{n} {title}" for lang, title in document["titles"].items()}
        document["categories"] = [1_000 + n % 500]
        document["first_seen"] = start + timedelta(seconds=n)
        document["last_seen"] = start + timedelta(days=30, seconds=n)
        if n % 50 == 0:
            document["vanished"] = {str(1_000 + n % 500): {"crawl_id": "x", "noticed_by": "y",
                                                           "at": start}}
        yield document


def populate(uri: str, database: str, count: int = PRODUCTS) -> None:
    with pymongo.MongoClient(uri) as client:
        products = client[database]["products"]
        products.drop()
        batch: list[dict[str, Any]] = []
        for document in generated(count):
            batch.append(document)
            if len(batch) == INSERT_BATCH:
                products.insert_many(batch, ordered=False)
                batch = []
        if batch:
            products.insert_many(batch, ordered=False)


#: The CSV's columns for the bare loop (it imports nothing of the project).
COLUMNS = {"languages": LANGUAGES, "values": PRICE_FIELDS,
           "after_shop_names": (*SHOP_FIELDS, *FLAG_FIELDS, *LINK_FIELDS)}


def digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def export_products(bench: Bench, count: int = PRODUCTS) -> dict[str, Any]:
    """B10: peak RSS and time per 1,000 products of ``scrapy export`` to CSV and XLSX, and
    of the bare loop to the same CSV, side by side on one generated database."""
    from tests.benchmarks.run import ROOT, measure  # noqa: PLC0415 - run.py imports this

    database = "b8"
    populate(bench.mongod.uri, database, count)
    env = {"MONGO_URI": bench.mongod.uri, "MONGO_DATABASE": database}
    runs: dict[str, Any] = {}
    for name, command in (
        ("bare_csv", [sys.executable, "-m", "tests.benchmarks.bare_export", bench.mongod.uri,
                      database, str(bench.workdir / "bare.csv"), json.dumps(COLUMNS)]),
        ("csv", [sys.executable, "-m", "scrapy", "export", "products", "-O",
                 str(bench.workdir / "products.csv")]),
        ("xlsx", [sys.executable, "-m", "scrapy", "export", "products", "-O",
                  str(bench.workdir / "products.xlsx")]),
    ):
        own = bench.workdir / f"{name}-peak.json"
        run = measure([sys.executable, "-m", "tests.benchmarks.peak", str(own), *command],
                      env, ROOT)
        if run.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{run.output[-3000:]}")
        measured = json.loads(own.read_text())
        run.cpu, run.max_rss_mb = measured["cpu"], measured["max_rss_mb"]
        runs[name] = run
    same = digest(bench.workdir / "bare.csv") == digest(bench.workdir / "products.csv")
    per_k = {name: run.wall / count * 1000 for name, run in runs.items()}
    return {
        "products": count,
        "same_csv_as_bare": same,
        **{f"{name}_peak_mb": round(run.max_rss_mb, 1) for name, run in runs.items()},
        **{f"{name}_s_per_1k": round(value, 4) for name, value in per_k.items()},
        **{f"{name}_cpu_s_per_1k": round(run.cpu / count * 1000, 4)
           for name, run in runs.items()},
        "csv_vs_bare": round(per_k["csv"] / per_k["bare_csv"], 2),
        "xlsx_vs_bare": round(per_k["xlsx"] / per_k["bare_csv"], 2),
    }

