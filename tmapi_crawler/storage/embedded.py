"""The zero-set-up local MongoDB the crawler uses when ``MONGO_URI`` is not set.

One mongod per data directory (default ``.data/mongodb`` under the project root), detached so
it outlives the crawl that started it and is reused by the next one; ``scrapy mongo stop``
ends it. The lifecycle (state file, start lock, reuse, verified stop) is
``tmapi_crawler.servers.EmbeddedServer``'s; this module says how to run mongod.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymongo
from pymongo.errors import PyMongoError

from tmapi_crawler.folders import private_dir
from tmapi_crawler.servers import (
    LOCALHOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    EmbeddedServer,
    EmbeddedServerError,
    Running,
    ServerStartError,
    find_mongod,
    log_errors,
    pid_alive,
    port_open,
    resolve_dir,
)

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

DEFAULT_DIR = ".data/mongodb"
DB_SUBDIR = "db"
EmbeddedMongo = Running
EmbeddedMongoError = EmbeddedServerError


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


def mongo_status(port: int, timeout: float = 0.25) -> dict[str, Any] | None:
    """``serverStatus`` of the mongod on ``port`` if it answers ``ping`` in time, else None.

    The status carries the server's own ``pid``: how a port is known to be served by the
    mongod we started.
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


def proc_argv(pid: int) -> list[str]:
    """A process's command line from ``/proc`` (empty when it is gone or not Linux)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class MongodServer(EmbeddedServer):
    name = "mongod"
    url_setting = "MONGO_URI"
    command = "mongo"

    @property
    def dbpath(self) -> Path:
        return self.data_dir / DB_SUBDIR

    def uri(self, port: int) -> str:
        return f"mongodb://{LOCALHOST}:{port}"

    def answering_pid(self, port: int) -> int | None:
        status = mongo_status(port, 1.0)
        return None if status is None else int(status["pid"])

    def launch(self, port: int, timeout: float) -> None:
        """``--fork`` returns once mongod accepts connections. mongod's own ``mongod.lock``
        refuses a second server on one dbpath and recovers a crashed one from its journal."""
        private_dir(self.dbpath)
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        args = [*mongod_args(find_mongod(), self.dbpath, port, self.log_file), "--fork"]
        try:
            result = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ServerStartError(
                f"mongod did not become ready within {timeout:.0f} s; see {self.log_file}"
            ) from None
        if result.returncode != 0:
            tail = log_errors(self.log_file, since=log_start)
            raise ServerStartError(self._start_failure(result.stdout, tail))

    def is_ours(self, pid: int) -> bool:
        argv = proc_argv(pid)
        return bool(argv) and Path(argv[0]).name == "mongod" and str(self.dbpath.resolve()) in argv

    def _start_failure(self, stdout: str, tail: str) -> str:
        """mongod's reason and, if another mongod holds the dbpath, its pid."""
        message = f"mongod failed to start:\n{stdout.strip()}\n{tail.strip()}"
        with contextlib.suppress(OSError, ValueError):
            holder = int((self.dbpath / "mongod.lock").read_text().strip())
            if pid_alive(holder):
                message += (f"\nanother mongod (pid {holder}) holds {self.dbpath}; stop it "
                            "before starting a new one")
        return message


def resolve_data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """``MONGO_EMBEDDED_DIR`` as an absolute path; relative ones hang off the project root."""
    return resolve_dir(value, DEFAULT_DIR)


def server(settings: BaseSettings) -> MongodServer:
    """The embedded mongod that ``settings`` name (``MONGO_EMBEDDED_DIR``)."""
    return MongodServer(resolve_data_dir(settings.get("MONGO_EMBEDDED_DIR")))


def resolve_mongo_uri(settings: BaseSettings) -> str:
    """``MONGO_URI`` if set, else the embedded mongod's URI (started if needed).

    Blocking (a start takes about a second): call it from a thread in async code.
    """
    return settings.get("MONGO_URI") or server(settings).ensure_running().uri


def running(data_dir: str | os.PathLike[str]) -> EmbeddedMongo | None:
    """The embedded mongod of ``data_dir`` if it answers and is the one the state file names."""
    return MongodServer(resolve_data_dir(data_dir)).running()


def ensure_running(
    data_dir: str | os.PathLike[str], timeout: float = START_TIMEOUT
) -> EmbeddedMongo:
    """Reuse the embedded mongod of ``data_dir`` or start one."""
    return MongodServer(resolve_data_dir(data_dir)).ensure_running(timeout)


def stop(data_dir: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> EmbeddedMongo | None:
    """Cleanly shut down the embedded mongod of ``data_dir``; return what was stopped, if any."""
    return MongodServer(resolve_data_dir(data_dir)).stop(timeout)
