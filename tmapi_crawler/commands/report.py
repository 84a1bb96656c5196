"""``scrapy report``: what the last crawl cost, found and changed, in a few lines.

Read-only: it never starts the embedded MongoDB. A user who stopped it is told how to start it
again, rather than getting a server started behind their back.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

import pymongo
from pymongo.errors import PyMongoError

from tmapi_crawler.cli import ProjectCommand, note
from tmapi_crawler.server_command import redact
from tmapi_crawler.shell import command_line
from tmapi_crawler.storage import completeness
from tmapi_crawler.storage import embedded as embedded_mongo
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, LEDGER, PRODUCTS, REJECTED
from tmapi_crawler.storage.cost import format_cost

#: Lines of the category and cheapest-product lists.
TOP = 5


class Command(ProjectCommand):
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def short_desc(self) -> str:
        return "What the last crawl cost, found and changed, from MongoDB (never starts it)"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        located = locate_database(self.settings)
        if isinstance(located, str):
            note(f"error: {located}")
            self.exitcode = 1
            return
        uri, where = located
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=5000, tz_aware=True)
        try:
            with client:
                print(summary(client[self.settings.get("MONGO_DATABASE")], where))
            print(f"Query it: {command_line('mongo', 'shell')} (examples in README.md, "
                  "\"Querying\")")
        except PyMongoError as exc:
            note(f"error: MongoDB at {redact(uri)}: {exc}")
            self.exitcode = 1


def locate_database(settings: Any) -> tuple[str, str] | str:
    """(URI, how to describe it) of the database in use, or why there is none to read."""
    if uri := settings.get("MONGO_URI"):
        return uri, redact(uri)
    server = embedded_mongo.server(settings)
    found = server.running()
    if found is not None:
        return found.uri, f"{found.uri} (the embedded MongoDB, data in {found.data_dir})"
    if not server.dbpath.exists():
        return (f"no crawl has stored anything here yet (no embedded MongoDB in "
                f"{server.data_dir}): run scripts/demo, or "
                f"{command_line('crawl', 'category_items', '-a', 'cat_id=...')}")
    return (f"the embedded MongoDB is not running (data in {server.data_dir}): start it with "
            f"{command_line('mongo', 'start')}")


def _when(moment: Any) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if isinstance(moment, datetime) else "?"


def _took(db: Any, run: Mapping[str, Any]) -> str:
    """From the start to the last page recorded: the wait before the crawl closes once its
    work is done (a cluster worker's ``MAX_IDLE_TIME_BEFORE_CLOSE``, 30 s) is no part of it."""
    start, end = run.get("started_at"), run.get("finished_at")
    if not (isinstance(start, datetime) and isinstance(end, datetime)):
        return ""
    last = next(db[LEDGER].aggregate([{"$match": {"crawl_id": run["_id"]}},
                                      {"$group": {"_id": None, "at": {"$max": "$at"}}}]), None)
    if last is not None and isinstance(last["at"], datetime):
        end = min(end, last["at"])
    return f", took {(end - start).total_seconds():.0f} s"


def _codes(answers: Mapping[str, int]) -> str:
    return ", ".join(f"{code}: {count}" for code, count in sorted(answers.items()))


def changes_of(db: Any, crawl_id: str) -> dict[str, Any]:
    """What the crawl changed, from ``history``: products, then each field's count, and for
    prices how many went down and up."""
    rows = db[HISTORY].aggregate([
        {"$match": {"crawl_id": crawl_id}},
        {"$project": {"field": {"$objectToArray": "$changes"}}},
        {"$unwind": "$field"},
        {"$group": {
            "_id": "$field.k", "products": {"$sum": 1},
            "down": {"$sum": {"$cond": [{"$lt": [{"$last": "$field.v"},
                                                 {"$first": "$field.v"}]}, 1, 0]}},
            "up": {"$sum": {"$cond": [{"$gt": [{"$last": "$field.v"},
                                               {"$first": "$field.v"}]}, 1, 0]}},
        }},
        {"$sort": {"products": -1}},
    ])
    return {"products": db[HISTORY].count_documents({"crawl_id": crawl_id}),
            "fields": list(rows)}


def _changed_line(changes: Mapping[str, Any]) -> str:
    if not changes["products"]:
        return "nothing, against the crawl before (new products have no history)"
    parts = []
    for row in changes["fields"]:
        part = f"{row['_id']} {row['products']}"
        if row["_id"] in ("price", "sale_price"):
            part += f" ({row['down']} down, {row['up']} up)"
        parts.append(part)
    return f"{changes['products']} products since the crawl before: {', '.join(parts)}"


def _spent(run: Mapping[str, Any]) -> str:
    """The crawl's paid calls by what they bought, per category, and what resumes saved."""
    cost = run.get("cost")
    if not cost:
        return "not recorded (a crawl before cost was recorded, or still running)"
    line = format_cost(cost)
    by_category = cost.get("by_category") or {}
    if by_category:
        top = sorted(by_category.items(), key=lambda kv: -kv[1])[:TOP]
        line += "; by category " + ", ".join(f"{cat}: {n}" for cat, n in top)
    resumes = run.get("resumes") or []
    if resumes:
        line += f"; resumed {len(resumes)} times"
    return line


def summary(db: Any, where: str) -> str:
    """The report: the database, the last crawl's cost, finds and changes, the categories."""
    products = db[PRODUCTS]
    categories = list(products.aggregate([
        {"$unwind": "$categories"},
        {"$group": {"_id": "$categories", "n": {"$sum": 1}, "min": {"$min": "$price"}}},
        {"$sort": {"n": -1, "_id": 1}},
    ]))
    lines = [
        f"MongoDB {where}, database {db.name!r}",
        f"  {products.estimated_document_count()} products in {len(categories)} categories; "
        f"{db[REJECTED].estimated_document_count()} rejected items kept (collection "
        f"{REJECTED})",
    ]
    run = db[CRAWL_RUNS].find_one(sort=[("started_at", pymongo.DESCENDING)])
    if run is None:
        lines.append("No crawl recorded yet.")
        return "\n".join(lines)
    counts, answers = run.get("counts", {}), run.get("answers", {})
    earlier = db[CRAWL_RUNS].count_documents({"_id": {"$ne": run["_id"]}})
    seen, new = counts.get("products_seen", 0), counts.get("new", 0)
    failed = counts.get("failed_pages", 0)
    lines += [
        f"Last crawl {run['_id']}, started {_when(run.get('started_at'))}{_took(db, run)}: "
        f"{run.get('finish_reason', 'still running')}",
        f"  cost      {sum(answers.values())} API calls (answers by code: "
        f"{_codes(answers) or 'none'})",
        f"  spent     {_spent(run)}",
        f"  found     {counts.get('items', 0)} sightings of {seen} products: {new} new, "
        f"{seen - new} seen before; {counts.get('rejected', 0)} rejected; "
        f"{counts.get('pages', 0)} pages, {failed} given up",
        f"  read      {completeness.shown(run)}",
        f"  changed   {_changed_line(changes_of(db, run['_id']))}",
        f"  vanished  {counts.get('vanished', 0)} listings (product in category) no longer "
        "listed" + ("" if run.get("finish_reason") == "finished"
                    else " (only a finished crawl can tell)"),
        f"  before    {earlier} earlier crawls recorded (collection {CRAWL_RUNS})",
    ]
    if categories:
        lines.append("Categories, most products first:")
        lines += [f"  {row['_id']}: {row['n']} products found, from {row['min']} CNY"
                  for row in categories[:TOP]]
        if len(categories) > TOP:
            lines.append(f"  ... and {len(categories) - TOP} more")
    cheapest = list(products.find(
        {"free_shipping": True, "price": {"$ne": None}}, {"price": 1, "titles": 1},
        sort=[("price", pymongo.ASCENDING)], limit=3))
    if cheapest:
        lines.append("Cheapest with free shipping:")
        for doc in cheapest:
            titles = doc.get("titles", {})
            title = titles.get("en") or next(iter(titles.values()), "")
            lines.append(f"  {doc['_id']}  {doc['price']} CNY  {title}")
    return "\n".join(lines)
