"""``scrapy mongo``: manage and open the embedded MongoDB that crawls use without ``MONGO_URI``.

``start|stop|status|uri`` as for every embedded server (``tmapi_crawler.server_command``), and
``shell``: a Python shell bound to the crawler's database, in which a query's result prints as
its documents, as in ``mongosh``, instead of as a cursor object.
"""

from __future__ import annotations

import builtins
import code
import pprint
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import pymongo
from pymongo.command_cursor import CommandCursor
from pymongo.cursor import Cursor

from tmapi_crawler.server_command import ServerCommand, redact
from tmapi_crawler.storage import embedded as embedded_mongo
from tmapi_crawler.storage.collections import PRODUCTS

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from tmapi_crawler.servers import EmbeddedServer

#: Documents a query shows in the shell before it says there are more.
SHOWN = 20
SHELL_EXAMPLES = (
    "products.count_documents({})",
    "products.find({}, {'titles': 1, 'price': 1}).sort('sales_90d', -1).limit(5)",
)


def readable(value: Any) -> Any:
    """A document for the eye: times as ``2026-11-28 03:59:15+00:00``, not their repr."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dict):
        return {key: readable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [readable(item) for item in value]
    return value


def show(value: Any) -> None:
    """The shell's display hook: a cursor shows its documents (at most ``SHOWN``)."""
    if not isinstance(value, Cursor | CommandCursor):
        sys.__displayhook__(value)
        return
    # A plain cursor is shown through a copy, so the one in `_` can still be iterated.
    documents = value.clone() if isinstance(value, Cursor) else value
    shown = 0
    for document in documents:
        if shown == SHOWN:
            print(f"(more than {SHOWN} documents: narrow the query, page with "
                  ".skip(n).limit(n), or iterate it)")
            break
        pprint.pprint(readable(document), sort_dicts=False, width=120)
        shown += 1
    if not shown:
        print("(no documents)")
    builtins._ = value  # type: ignore[attr-defined]


class Command(ServerCommand):
    kind = embedded_mongo.MongodServer
    product = "MongoDB"
    dir_setting = "MONGO_EMBEDDED_DIR"
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def server(self, settings: BaseSettings) -> EmbeddedServer:
        return embedded_mongo.server(settings)

    def actions(self) -> dict[str, Callable[[], None]]:
        return {**super().actions(), "shell": self._shell}

    def long_desc(self) -> str:
        return (super().long_desc() + " shell: a Python shell with client, db and products "
                "bound; a query prints its documents.")

    def _shell(self) -> None:
        assert self.settings is not None
        uri = self.in_use_url()
        if uri is None:
            return
        client: pymongo.MongoClient = pymongo.MongoClient(uri, tz_aware=True)
        db = client[self.settings.get("MONGO_DATABASE")]
        products = db[PRODUCTS]
        banner = "\n".join([
            f"MongoDB at {redact(uri)}, database {db.name!r}",
            "Bound: client, db, products. A query prints its documents. Try:",
            *(f"  {example}" for example in SHELL_EXAMPLES),
        ])
        hook = sys.displayhook
        sys.displayhook = show
        try:
            code.interact(banner=banner, local={"client": client, "db": db, "products": products},
                          exitmsg="")
        finally:
            sys.displayhook = hook
            client.close()
