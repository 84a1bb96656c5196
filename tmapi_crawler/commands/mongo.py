"""``scrapy mongo``: manage and open the embedded MongoDB that crawls use without ``MONGO_URI``.

stdout carries only what scripts consume (``MONGO_URI=...`` from ``start``, the URI from
``uri``); human notes go to stderr, so ``export $(scrapy mongo start)`` works.
"""

from __future__ import annotations

import code
import re
import sys
from typing import TYPE_CHECKING, Any, ClassVar

import pymongo
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from tmapi_crawler.servers import ServerNotFound
from tmapi_crawler.storage import embedded as embedded_mongo

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

DEFAULT_DATABASE = "tmapi"
PRODUCTS_COLLECTION = "products"
SHELL_EXAMPLES = (
    "products.count_documents({})",
    "products.find_one({}, sort=[('_id', -1)])",
)


def redact(uri: str) -> str:
    """A MongoDB URI without its credentials, for messages."""
    return re.sub(r"(?<=://)[^@/]*@", "***@", uri)


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "start|stop|status|uri|shell"

    def short_desc(self) -> str:
        return "Start, stop or open the embedded MongoDB used when MONGO_URI is not set"

    def long_desc(self) -> str:
        return (
            "start: start or reuse the embedded mongod and print MONGO_URI=...; "
            "stop: shut it down; status: report it (exit 1 if not running); "
            "uri: print the URI in use (MONGO_URI, else the running embedded mongod; exit 1 if "
            "none); shell: a Python shell with client, db and products bound. "
            "Data lives in MONGO_EMBEDDED_DIR (default .data/mongodb under the project root)."
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        actions = {
            "start": self._start,
            "stop": self._stop,
            "status": self._status,
            "uri": self._uri,
            "shell": self._shell,
        }
        if len(args) != 1 or args[0] not in actions:
            raise UsageError(f"expected one of: {self.syntax()}")
        try:
            actions[args[0]]()
        except (embedded_mongo.EmbeddedMongoError, ServerNotFound) as exc:
            self._fail(str(exc))

    @property
    def _external_uri(self) -> str | None:
        assert self.settings is not None
        return self.settings.get("MONGO_URI") or None

    @property
    def _data_dir(self) -> Path:
        assert self.settings is not None
        return embedded_mongo.resolve_data_dir(self.settings.get("MONGO_EMBEDDED_DIR"))

    def _not_in_use(self, external: str) -> None:
        _note(f"MONGO_URI is set ({redact(external)}): the embedded MongoDB is not in use")

    def _start(self) -> None:
        if external := self._external_uri:
            self._not_in_use(external)
            return
        server = embedded_mongo.ensure_running(self._data_dir)
        verb = "started" if server.started_here else "reusing"
        _note(f"{verb} embedded mongod (pid {server.pid}, data in {server.data_dir})")
        print(f"MONGO_URI={server.uri}")

    def _stop(self) -> None:
        if external := self._external_uri:
            self._not_in_use(external)
            return
        stopped = embedded_mongo.stop(self._data_dir)
        if stopped is None:
            _note("embedded mongod is not running")
        else:
            _note(f"stopped embedded mongod (pid {stopped.pid})")

    def _status(self) -> None:
        if external := self._external_uri:
            self._not_in_use(external)
            return
        server = embedded_mongo.running(self._data_dir)
        if server is None:
            self._fail(f"embedded mongod is not running (data dir {self._data_dir})")
            return
        print(f"running: {server.uri} (pid {server.pid}, data in {server.data_dir})")

    def _uri(self) -> None:
        if external := self._external_uri:
            print(external)
            return
        server = embedded_mongo.running(self._data_dir)
        if server is None:
            self._fail("embedded mongod is not running: start it with `scrapy mongo start`")
            return
        print(server.uri)

    def _shell(self) -> None:
        assert self.settings is not None
        uri = embedded_mongo.resolve_mongo_uri(self.settings)
        client: pymongo.MongoClient = pymongo.MongoClient(uri)
        db = client[self.settings.get("MONGO_DATABASE") or DEFAULT_DATABASE]
        products = db[PRODUCTS_COLLECTION]
        banner = "\n".join(
            [
                f"MongoDB at {redact(uri)}, database {db.name!r}",
                "Bound: client, db, products. Try:",
                *(f"  {example}" for example in SHELL_EXAMPLES),
            ]
        )
        try:
            code.interact(
                banner=banner,
                local={"client": client, "db": db, "products": products},
                exitmsg="",
            )
        finally:
            client.close()

    def _fail(self, message: str) -> None:
        _note(message)
        self.exitcode = 1


def _note(message: str) -> None:
    print(message, file=sys.stderr)
