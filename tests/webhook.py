"""A real local webhook for alerts: Apprise's ``json://`` URL posts to it over HTTP.

It keeps what it was sent, or answers 500, or holds every request open until the test ends
(a service that hangs). Its URL carries a secret path, to be looked for where it must not be.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

#: How long a held request waits at most for the test to end (never reached in a passing run).
_HOLD_LIMIT = 120


class Webhook:
    """``mode``: ``ok`` (200, message kept), ``fail`` (500) or ``hang`` (no answer)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.secret = "hook-" + secrets.token_hex(8)
        self.messages: list[dict[str, Any]] = []
        self.requests = 0
        self.arrived = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._lock:
                    hook.requests += 1
                    hook.arrived.set()
                if hook.mode == "hang":
                    hook._release.wait(_HOLD_LIMIT)
                    return
                if hook.mode == "fail" or self.path != f"/{hook.secret}":
                    self.send_response(500)
                    self.end_headers()
                    return
                with hook._lock:
                    hook.messages.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/{self.secret}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def titles(self) -> list[str]:
        with self._lock:
            return [m["title"] for m in self.messages]

    def take(self) -> list[dict[str, Any]]:
        """The messages received so far, forgotten here."""
        with self._lock:
            taken, self.messages = self.messages, []
        return taken
