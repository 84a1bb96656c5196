"""Run the sandbox as a child process, for tests, the demo and benchmarks.

A separate process rather than an in-process server: the crawler under test then talks to it
over real HTTP exactly as it would to the provider, and neither steals the other's event loop or
CPU. Start-up is synchronised on the server's "listening" line, never on a sleep.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tmapi_crawler import api
from tmapi_crawler.sandbox.__main__ import READY_PREFIX

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Control calls go straight to the local server, whatever proxy the environment configures.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def options_to_argv(options: Mapping[str, Any]) -> list[str]:
    """Keyword options as command-line flags: `fault={417: 0.1}` -> `--fault 417=0.1`.

    Names are the flags' (`latency_jitter` -> `--latency-jitter`); lists repeat the flag, dicts
    repeat it with KEY=VALUE, None leaves it out; True gives a switch alone, False nothing.
    """
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
            continue
        if isinstance(value, Mapping):
            values = [f"{key}={item}" for key, item in value.items()]
        elif isinstance(value, list | tuple | set | frozenset):
            values = [str(item) for item in value]
        else:
            values = [str(value)]
        for text in values:
            argv += [flag, text]
    return argv


def _query_value(value: Any) -> str:
    return api.format_bool(value) if isinstance(value, bool) else str(value)


class SandboxProcess:
    """`python -m tmapi_crawler.sandbox --port 0 ...` as a context manager.

    Usage: `with SandboxProcess(token=["t"], latency=0.01) as sandbox: ... sandbox.url ...`.
    Positional arguments are passed to the command line as they are; keyword options go through
    `options_to_argv`.
    """

    def __init__(self, *args: str, startup_timeout: float = 30.0, **options: Any) -> None:
        self.argv = [sys.executable, "-m", "tmapi_crawler.sandbox", "--port", "0", *args,
                     *options_to_argv(options)]
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self.url = ""
        self.returncode: int | None = None  # the child's exit status, once stopped

    @property
    def api_url(self) -> str:
        """The endpoint a crawler should call (base URL plus the API's path)."""
        return self.url + api.PATH

    def start(self) -> Self:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives until stop()
        self._process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
            env=env,
        )
        try:
            line = self._read_line()
        except BaseException:
            self.stop()
            raise
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"unexpected first line from the sandbox: {line!r}")
        self.url = line.removeprefix(READY_PREFIX)
        return self

    def _read_line(self) -> str:
        """The first line of the child's stdout, or an error carrying its stderr."""
        assert self._process is not None
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"sandbox not listening after {self.startup_timeout} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"sandbox exited before listening:\n{self._errors()}")
                received += chunk
        return received.split(b"\n", 1)[0].decode()

    def _errors(self) -> str:
        if self._process is not None:
            self._process.wait(timeout=10)
        self._stderr.seek(0)
        return str(self._stderr.read().decode(errors="replace"))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.returncode = process.returncode
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, method: str, path: str, params: Mapping[str, Any] | None = None,
              body: Any = None) -> Any:
        url = f"{self.url}/_sandbox/{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: _query_value(v) for k, v in params.items()})
        data = json.dumps(body).encode() if method == "POST" else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"})
        with _OPENER.open(request, timeout=30) as response:
            return json.load(response)

    def stats(self, records: bool = True) -> dict[str, Any]:
        """Counters since the last reset (see the server's `handle_stats` for the keys)."""
        stats: dict[str, Any] = self._call("GET", "stats", None if records else {"records": 0})
        return stats

    def reset(self) -> None:
        """Zero counters and quota usage, re-seed the fault dice."""
        self._call("POST", "reset", body={})

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change runtime settings (e.g. `price_epoch=1`, `fault_rates={417: 0.1}`)."""
        config: dict[str, Any] = self._call("POST", "config", body=changes)
        return config

    def truth(self, **query: Any) -> dict[str, Any]:
        """What a complete crawl of the query must find: `item_ids`, `total`, ..."""
        truth: dict[str, Any] = self._call("GET", "truth", query)
        return truth
