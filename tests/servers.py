"""Throw-away ``mongod`` and ``redis-server`` child processes for the tests and benchmarks.

The suite's servers (``tests/conftest.py``), crash-recovery tests and the benchmarks start,
kill and restart real servers through these. They share the binaries and command lines with
the crawler's embedded servers (``tmapi_crawler.servers``, ``storage.embedded``,
``distributed.embedded``), which only need to start a detached server once and leave it
running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from tmapi_crawler.distributed.embedded import redis_args
from tmapi_crawler.servers import (
    LOCALHOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ServerStartError,
    find_mongod,
    find_redis_server,
    free_port,
    log_errors,
    port_open,
)
from tmapi_crawler.storage.embedded import mongo_status, mongod_args

_POLL_INTERVAL = 0.05

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
    """A throw-away mongod (the crawler uses ``tmapi_crawler.storage.embedded``)."""

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
        return redis_args(self.binary, self.data_dir, self.port, self.log_path,
                          persistent=self.persistent)

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
