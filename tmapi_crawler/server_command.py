"""What ``scrapy mongo`` and ``scrapy redis`` share: one shape for both embedded servers.

``start`` (or reuse), ``stop``, ``status`` and ``uri``, reading the same settings a crawl
reads, so the command and the crawl always agree on which server is meant. stdout carries only
what scripts consume (``MONGO_URI=...`` / ``REDIS_URL=...`` from ``start``, the address from
``uri``); notes for people go to stderr, so ``export $(scripts/scrapy mongo start)`` works.

Kept outside ``tmapi_crawler.commands``: Scrapy takes every command class defined there for a
command of its own.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.exceptions import UsageError

from tmapi_crawler.cli import ProjectCommand, note
from tmapi_crawler.servers import EmbeddedServer, EmbeddedServerError, ServerNotFound
from tmapi_crawler.shell import command_line

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from scrapy.settings import BaseSettings


def redact(url: str) -> str:
    """A server address without its credentials, for messages."""
    return re.sub(r"(?<=://)[^@/]*@", "***@", url)


class ServerCommand(ProjectCommand):
    """``scrapy <name> start|stop|status|uri`` for one kind of embedded server."""

    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}
    #: The server, what it is to people ("MongoDB") and the setting of its data directory.
    kind: ClassVar[type[EmbeddedServer]]
    product: ClassVar[str]
    dir_setting: ClassVar[str]

    def server(self, settings: BaseSettings) -> EmbeddedServer:
        raise NotImplementedError

    def actions(self) -> dict[str, Callable[[], None]]:
        return {"start": self._start, "stop": self._stop, "status": self._status,
                "uri": self._uri}

    def syntax(self) -> str:
        return "|".join(self.actions())

    def short_desc(self) -> str:
        return (f"Start, stop or show the embedded {self.product} used when "
                f"{self.kind.url_setting} is not set")

    def long_desc(self) -> str:
        url_setting = self.kind.url_setting
        return (
            f"start: start or reuse the embedded {self.product} and print {url_setting}=...; "
            "stop: shut it down; status: report it (exit 1 if not running); "
            f"uri: print the address in use ({url_setting}, else the running embedded server; "
            f"exit 1 if none). Data lives in {self.dir_setting} (relative paths are under the "
            "project folder)."
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        actions = self.actions()
        if len(args) != 1 or args[0] not in actions:
            raise UsageError(f"expected one of: {self.syntax()}")
        try:
            actions[args[0]]()
        except (EmbeddedServerError, ServerNotFound) as exc:
            self._fail(str(exc))

    @property
    def embedded(self) -> EmbeddedServer:
        assert self.settings is not None
        return self.server(self.settings)

    @property
    def external_url(self) -> str | None:
        assert self.settings is not None
        return self.settings.get(self.kind.url_setting) or None

    def in_use_url(self) -> str | None:
        """The configured address, else the running embedded server's; None when neither.

        Never starts a server: a user who stopped it gets told, not a new one behind their back.
        """
        if external := self.external_url:
            return external
        found = self.embedded.running()
        if found is None:
            self._fail(f"the embedded {self.product} is not running (data in "
                       f"{self.embedded.data_dir}): start it with "
                       f"{command_line(self.kind.command, 'start')}")
            return None
        return found.uri

    def _not_in_use(self, external: str) -> None:
        note(f"{self.kind.url_setting} is set ({redact(external)}): the embedded "
             f"{self.product} is not in use")

    def _start(self) -> None:
        if external := self.external_url:
            self._not_in_use(external)
            return
        embedded = self.embedded
        server = embedded.ensure_running()
        verb = "started" if server.started_here else "reusing"
        note(f"{verb} embedded {embedded.name} (pid {server.pid}, data in {server.data_dir}); "
             f"stop it with {command_line(embedded.command, 'stop')}")
        print(f"{self.kind.url_setting}={server.uri}")

    def _stop(self) -> None:
        if external := self.external_url:
            self._not_in_use(external)
            return
        embedded = self.embedded
        stopped = embedded.stop()
        if stopped is None:
            note(f"embedded {embedded.name} is not running")
        else:
            note(f"stopped embedded {embedded.name} (pid {stopped.pid}); its data stays in "
                 f"{stopped.data_dir}")

    def _status(self) -> None:
        if external := self.external_url:
            self._not_in_use(external)
            return
        server = self.embedded.running()
        if server is None:
            self._fail(f"embedded {self.embedded.name} is not running (data dir "
                       f"{self.embedded.data_dir})")
            return
        print(f"running: {server.uri} (pid {server.pid}, data in {server.data_dir})")

    def _uri(self) -> None:
        url = self.in_use_url()
        if url is not None:
            print(url)

    def _fail(self, message: str) -> None:
        note(f"error: {message}")
        self.exitcode = 1
