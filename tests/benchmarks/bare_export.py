"""B10's floor: the same CSV as ``scrapy export products``, from a bare pymongo loop.

Imports nothing of the project or of Scrapy (the columns come as a JSON argument), so its
time and memory are those of reading the documents and writing the rows, nothing else.

    python -m tests.benchmarks.bare_export URI DATABASE OUT.csv COLUMNS_JSON
"""

from __future__ import annotations

import codecs
import csv
import json
import sys
from pathlib import Path
from typing import Any

import pymongo


def bare(uri: str, database: str, out: Path, columns: dict[str, Any]) -> None:
    languages, values, after = (columns["languages"], columns["values"],
                                columns["after_shop_names"])
    fields = dict.fromkeys(("titles", "company_names", *values, *after, "categories",
                            "first_seen", "last_seen", "vanished"), 1)
    header = ["item_id", *(f"title_{lang}" for lang in languages), *values,
              *(f"shop_name_{lang}" for lang in languages), *after, "categories",
              "first_seen", "last_seen", "vanished"]
    with pymongo.MongoClient(uri, tz_aware=True) as client, \
            out.open("w", encoding="utf-8", newline="") as file:
        file.write(codecs.BOM_UTF8.decode())
        writer = csv.writer(file)
        writer.writerow(header)
        for d in client[database]["products"].find({}, fields).sort("_id", 1):
            titles, shops = d.get("titles") or {}, d.get("company_names") or {}
            writer.writerow([
                d["_id"], *(titles.get(lang) for lang in languages),
                *(d.get(name) for name in values),
                *(shops.get(lang) for lang in languages),
                *(d.get(name) for name in after),
                ",".join(map(str, sorted(d.get("categories") or ()))),
                d["first_seen"].isoformat(), d["last_seen"].isoformat(),
                ",".join(sorted(d.get("vanished") or (), key=int)),
            ])


if __name__ == "__main__":
    bare(sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]))
