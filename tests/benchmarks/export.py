"""B10: ``scrapy export`` of a million stored products, beside a bare pymongo loop.

The database is the web app's B8 catalogue (``tests/benchmarks/generated.py``): a million
products in the writer's shapes, written straight into MongoDB (no crawl).

The bare loop (``tests/benchmarks/bare_export.py``) reads the same fields with ``find`` and
writes them with ``csv.writer``: the same file, byte for byte (checked), without the project's
query functions, records or Scrapy's exporter. Whatever the export spends above it is their
price.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymongo

from tests.benchmarks.generated import generate
from tmapi_crawler.exporters import FLAG_FIELDS, LINK_FIELDS, PRICE_FIELDS, SHOP_FIELDS

if TYPE_CHECKING:
    from tests.benchmarks.run import Bench

PRODUCTS = 1_000_000
#: The CSV's columns for the bare loop (it imports nothing of the project); the generated
#: products have titles in these languages.
COLUMNS = {"languages": ("en", "zh"), "values": PRICE_FIELDS,
           "after_shop_names": (*SHOP_FIELDS, *FLAG_FIELDS, *LINK_FIELDS)}


def digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def export_products(bench: Bench, count: int = PRODUCTS) -> dict[str, Any]:
    """B10: peak RSS and time per 1,000 products of ``scrapy export`` to CSV and XLSX, and
    of the bare loop to the same CSV, side by side on one generated database."""
    from tests.benchmarks.run import ROOT, measure  # noqa: PLC0415 - run.py imports this

    database = "b8"
    with pymongo.MongoClient(bench.mongod.uri) as client:
        generate(client[database], count)
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

