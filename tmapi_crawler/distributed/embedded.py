"""The zero-set-up local Redis a distributed crawl uses when ``REDIS_URL`` is not set.

The twin of the embedded MongoDB (``tmapi_crawler.storage.embedded``): one ``redis-server`` per
data directory (default ``.data/redis`` under the project root), started on demand by
``scrapy seed`` or a worker, shared by every worker on the machine, left running until
``scrapy redis stop``. It persists to an append-only file (fsynced every second), so the queue,
the dupefilter and the leases survive a restart of Redis.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tmapi_crawler.servers import (
    LOCALHOST,
    EmbeddedServer,
    EmbeddedServerError,
    ServerStartError,
    find_redis_server,
    log_errors,
    pid_alive,
    port_open,
    resolve_dir,
)
from tmapi_crawler.shell import command_line

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

DEFAULT_DIR = ".data/redis"
_POLL_INTERVAL = 0.05


def redis_args(binary: str, directory: Path, port: int, logpath: Path, *,
               persistent: bool) -> list[str]:
    """Command line for a loopback-only redis-server; ``persistent``: an append-only file in
    ``directory``, fsynced every second, so a restart keeps the queue."""
    return [
        binary,
        "--port", str(port),
        "--bind", LOCALHOST,
        "--dir", str(directory.resolve()),
        "--logfile", str(logpath.resolve()),
        "--daemonize", "no",
        "--save", "",
        "--appendonly", "yes" if persistent else "no",
    ]  # fmt: skip


def redis_pid(port: int, timeout: float = 0.25) -> int | None:
    """The pid the redis-server on ``port`` reports, if it answers in time (and is loaded)."""
    if not port_open(port, timeout):
        return None
    import redis  # noqa: PLC0415 - every command loads this module; only this needs redis-py

    client = redis.Redis(
        host=LOCALHOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        info = client.info("server")
        client.ping()
    except redis.RedisError:
        return None
    finally:
        client.close()
    return int(info["process_id"])


def proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


class RedisServer(EmbeddedServer):
    name = "redis-server"
    url_setting = "REDIS_URL"
    command = "redis"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    def uri(self, port: int) -> str:
        return f"redis://{LOCALHOST}:{port}/0"

    def answering_pid(self, port: int) -> int | None:
        return redis_pid(port, 1.0)

    def launch(self, port: int, timeout: float) -> None:
        """``--daemonize yes`` returns at once; the server is ready once it answers with the pid
        of its pid file (written after it bound the port), and failed if that pid is gone."""
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.pid_file.unlink(missing_ok=True)
        args = [*redis_args(find_redis_server(), self.data_dir, port, self.log_file,
                            persistent=True),
                "--daemonize", "yes", "--pidfile", str(self.pid_file.resolve())]
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if result.returncode != 0:
            raise ServerStartError(f"redis-server failed to start:\n{result.stdout.strip()}\n"
                                   f"{log_errors(self.log_file, since=log_start)}")
        deadline = time.monotonic() + timeout
        while True:
            pid = self._pid_from_file()
            if pid is not None and redis_pid(port) == pid:
                return
            if (pid is not None and not pid_alive(pid)) or self._failed(log_start):
                raise ServerStartError("redis-server failed to start:\n"
                                       + log_errors(self.log_file, since=log_start))
            if time.monotonic() > deadline:
                raise ServerStartError(f"redis-server did not answer within {timeout:.0f} s; "
                                       f"see {self.log_file}")
            time.sleep(_POLL_INTERVAL)

    def is_ours(self, pid: int) -> bool:
        """redis-server rewrites its command line, but it runs in its ``--dir``."""
        try:
            exe = Path(os.readlink(f"/proc/{pid}/exe")).name
        except OSError:
            return False
        return exe == self.name and proc_cwd(pid) == self.data_dir.resolve()

    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _failed(self, log_start: int) -> bool:
        """A fatal line since we launched it (redis logs ``# `` for warnings and errors)."""
        text = log_errors(self.log_file, since=log_start)
        return "already in use" in text or "Fatal" in text or "FATAL" in text


def resolve_data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """``REDIS_EMBEDDED_DIR`` as an absolute path; relative ones hang off the project root."""
    return resolve_dir(value, DEFAULT_DIR)


def server(settings: BaseSettings) -> RedisServer:
    """The embedded redis-server that ``settings`` name (``REDIS_EMBEDDED_DIR``)."""
    return RedisServer(resolve_data_dir(settings.get("REDIS_EMBEDDED_DIR")))


def resolve_redis_url(settings: BaseSettings, *, start: bool) -> str:
    """``REDIS_URL`` if set, else the embedded redis-server's URL.

    ``start``: start it if needed (``scrapy seed``, workers); otherwise (``scrapy status``,
    read-only) a stopped one is an :class:`EmbeddedServerError` naming the way to start it.
    """
    url = settings.get("REDIS_URL")
    if url:
        return url
    embedded = server(settings)
    if start:
        return embedded.ensure_running().uri
    found = embedded.running()
    if found is None:
        raise EmbeddedServerError(
            f"the embedded Redis is not running (data in {embedded.data_dir}): nothing has been "
            f"queued since it stopped; start it with {command_line('redis', 'start')}, or set "
            "REDIS_URL"
        )
    return found.uri
