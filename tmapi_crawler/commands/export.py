"""``scrapy export products|changes -O FILE``: what MongoDB holds, as a file, for nothing.

No crawl, no API call, no token: records come from the stored documents (``tmapi_crawler.
export``), streamed from a cursor into the exporter the file's extension names, as Scrapy's
``-O`` picks one: ``.csv`` (UTF-8 with a byte-order mark), ``.json``, ``.jsonl``, ``.xlsx``.
The file is written beside its final name and renamed when complete, so a failed export never
leaves half a file that looks whole. Like ``scrapy report``, it never starts the embedded
MongoDB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import pymongo
from pymongo.errors import PyMongoError
from scrapy.utils.conf import arglist_to_dict

from tmapi_crawler import export
from tmapi_crawler.cli import ProjectCommand, fail, note
from tmapi_crawler.commands.report import locate_database
from tmapi_crawler.exporters import CsvExporter, JsonExporter, JsonLinesExporter, XlsxExporter
from tmapi_crawler.server_command import redact
from tmapi_crawler.storage.queries import QueryError

if TYPE_CHECKING:
    import argparse

    from pymongo.database import Database

#: Exporter and record preparation per extension of ``-O FILE``.
FORMATS: Final[dict[str, tuple[type, Callable[[Any], Any]]]] = {
    ".csv": (CsvExporter, export.iso_times),
    ".json": (JsonExporter, export.iso_times),
    ".jsonl": (JsonLinesExporter, export.iso_times),
    ".xlsx": (XlsxExporter, lambda record: record),
}


def records(db: Database, what: str, filters: export.Filters) -> Iterator[dict[str, Any]]:
    """The records of ``scrapy export <what>``; a ``QueryError`` before the first one."""
    if what == "products":
        return export.products(db, export.product_selection(db, filters))
    return export.changes(db, export.change_selection(db, filters), filters.vanished)


def write(db: Database, what: str, filters: export.Filters, path: Path) -> int:
    """Export into ``path`` (replaced only once the export is complete); the record count."""
    exporter_class, prepare = FORMATS[path.suffix.lower()]
    rows = records(db, what, filters)
    partial = path.with_name(f".{path.name}.partial")
    count = 0
    try:
        with partial.open("wb") as file:
            exporter = exporter_class(file, encoding="utf-8")
            exporter.start_exporting()
            for record in rows:
                exporter.export_item(prepare(record))
                count += 1
            exporter.finish_exporting()
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return count


class Command(ProjectCommand):
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "products|changes -O FILE [-a NAME=VALUE ...]"

    def short_desc(self) -> str:
        return "Write stored products or their changes to CSV, JSON, JSONL or XLSX (no API call)"

    def long_desc(self) -> str:
        return (f"{self.short_desc()}. Filters: -a cat_id=ID[,ID...], -a since=<crawl id or "
                "ISO date> (products last seen then or later, changes made then or later), "
                "-a changed=true|false (products), -a vanished=true|false.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-O", "--overwrite-output", dest="output", metavar="FILE",
                            help="the file to write; its extension picks the format "
                                 f"({', '.join(FORMATS)})")
        parser.add_argument("-a", dest="filters", action="append", default=[],
                            metavar="NAME=VALUE", help="filter (may be repeated)")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        if len(args) != 1 or args[0] not in export.WHAT:
            fail(f"say what to export: {' or '.join(export.WHAT)}")
        if not opts.output:
            fail("say where: -O FILE (.csv, .json, .jsonl or .xlsx)")
        if Path(opts.output).suffix.lower() not in FORMATS:
            fail(f"-O {opts.output}: the extension names the format, one of "
                 f"{', '.join(FORMATS)}")
        try:
            opts.filters = export.parse_filters(arglist_to_dict(opts.filters), args[0])
        except ValueError as exc:
            fail(str(exc) if isinstance(exc, QueryError)
                 else "a filter is -a NAME=VALUE")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        located = locate_database(self.settings)
        if isinstance(located, str):
            note(f"error: {located}")
            self.exitcode = 1
            return
        uri, _ = located
        path = Path(opts.output)
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000,
                                     tz_aware=True) as client:
                count = write(client[self.settings.get("MONGO_DATABASE")], args[0],
                              opts.filters, path)
        except QueryError as exc:
            fail(str(exc))
        except PyMongoError as exc:
            note(f"error: MongoDB at {redact(uri)}: {exc}")
            self.exitcode = 1
            return
        except OSError as exc:
            note(f"error: {path}: {exc.strerror or exc}")
            self.exitcode = 1
            return
        note(f"Exported {count} {'products' if args[0] == 'products' else 'changes'} to "
             f"{os.fspath(path)}")
