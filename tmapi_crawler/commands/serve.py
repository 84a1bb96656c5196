"""``scrapy serve``: the local web app over the crawled MongoDB (``tmapi_crawler.web``).

Read-only like ``scrapy report``: it never starts the embedded MongoDB, and tells how to. It
has no login, so it listens on 127.0.0.1 unless told otherwise, and says so when it is.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any, ClassVar

from scrapy.exceptions import UsageError

from tmapi_crawler.cli import ProjectCommand, note
from tmapi_crawler.commands.report import locate_database

LOCALHOST = "127.0.0.1"


class Command(ProjectCommand):
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "[--port PORT] [--host HOST]"

    def short_desc(self) -> str:
        return "Browse the catalogue, price histories, movers and crawls in a local web app"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--port", type=int, default=8000,
                            help="port (default: 8000; 0: any free one, printed)")
        parser.add_argument("--host", default=LOCALHOST,
                            help=f"address to listen on (default: {LOCALHOST}, this machine only)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        import uvicorn  # noqa: PLC0415 (only this command needs the web stack)

        from tmapi_crawler.web.app import create_app  # noqa: PLC0415

        assert self.settings is not None
        if args:
            raise UsageError("serve takes no arguments")
        if not 0 <= opts.port < 65536:
            raise UsageError("--port: expected 0 to 65535")
        located = locate_database(self.settings)
        if isinstance(located, str):
            note(f"error: {located}")
            self.exitcode = 1
            return
        uri, where = located
        if opts.host != LOCALHOST:
            note(f"warning: listening on {opts.host}: the app has no login, anyone who can "
                 "reach this address sees the catalogue")
        database = self.settings.get("MONGO_DATABASE")
        try:
            listening = socket.create_server((opts.host, opts.port), family=_family(opts.host))
        except OSError as exc:
            note(f"error: cannot listen on {opts.host} port {opts.port}: {exc.strerror}")
            self.exitcode = 1
            return
        # Bound before the URL is printed: whoever reads it can connect at once. Connections
        # inherit no-delay from it (uvicorn sets it only on sockets it opens itself): without
        # it, each answer on a kept-alive connection waits out the client's delayed ACK (40 ms).
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = listening.getsockname()[1]
        shown = f"[{opts.host}]" if ":" in opts.host else opts.host
        print(f"Serving {where}, database {database}, read-only, at http://{shown}:{port}/ "
              "(Ctrl-C stops)", flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(uri, database), log_level="warning"))
        server.run(sockets=[listening])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
