"""The zero-set-up local MongoDB the crawler uses when ``MONGO_URI`` is not set.

One mongod per data directory (default ``.data/mongodb`` under the project root), detached so
it outlives the crawl that started it and is reused by the next one, like a development
server; ``scrapy mongo stop`` ends it. A state file records its pid and port; the pid that
the server itself reports must match it, so a recycled port or pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy.utils.conf import closest_scrapy_cfg

from tmapi_crawler.servers import (
    LOCALHOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    find_mongod,
    free_port,
    log_errors,
    mongo_status,
    mongod_args,
    pid_alive,
    wait_pid_gone,
)

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

DEFAULT_DIR = ".data/mongodb"
STATE_FILE = "mongod-state.json"
LOCK_FILE = "mongod-start.lock"
LOG_FILE = "mongod.log"
DB_SUBDIR = "db"
_PING_TIMEOUT = 1.0


class EmbeddedMongoError(RuntimeError):
    """The embedded mongod could not be started, reached or stopped."""


@dataclass(frozen=True)
class EmbeddedMongo:
    """A running embedded mongod; ``started_here`` tells whether this call started it."""

    data_dir: Path
    port: int
    pid: int
    started_here: bool

    @property
    def uri(self) -> str:
        return f"mongodb://{LOCALHOST}:{self.port}"


def project_root() -> Path:
    """The folder holding ``scrapy.cfg`` (searched from the cwd up), else the cwd."""
    cfg = closest_scrapy_cfg()
    return Path(cfg).parent if cfg else Path.cwd()


def resolve_data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """``MONGO_EMBEDDED_DIR`` as an absolute path; relative ones hang off the project root.

    Every function here takes its ``data_dir`` through this, so a crawl started from a
    sub-folder still finds the project's server.
    """
    path = Path(value or DEFAULT_DIR).expanduser()
    return (path if path.is_absolute() else project_root() / path).resolve()


def resolve_mongo_uri(settings: BaseSettings) -> str:
    """``MONGO_URI`` if set, else the embedded mongod's URI (started if needed).

    Blocking (a start takes about a second): call it from a thread in async code.
    """
    return (
        settings.get("MONGO_URI")
        or ensure_running(resolve_data_dir(settings.get("MONGO_EMBEDDED_DIR"))).uri
    )


def running(data_dir: str | os.PathLike[str]) -> EmbeddedMongo | None:
    """The embedded mongod of ``data_dir`` if it answers and is the one the state file names."""
    data_dir = resolve_data_dir(data_dir)
    state = _read_state(data_dir)
    if state is None:
        return None
    status = mongo_status(state["port"], _PING_TIMEOUT)
    if status is None or status.get("pid") != state["pid"]:
        return None
    return EmbeddedMongo(data_dir, state["port"], state["pid"], started_here=False)


def ensure_running(
    data_dir: str | os.PathLike[str], timeout: float = START_TIMEOUT
) -> EmbeddedMongo:
    """Reuse the embedded mongod of ``data_dir`` or start one.

    A file lock serialises concurrent callers (two crawls started together), so the second
    one finds the server the first one started instead of starting another on the same dbpath.
    """
    data_dir = resolve_data_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _start_lock(data_dir):
        found = running(data_dir)
        if found is not None:
            return found
        state = _read_state(data_dir)
        if state is not None:
            found = _await_existing(data_dir, state["pid"], timeout)
            if found is not None:
                return found
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return _start(data_dir, timeout)


def stop(data_dir: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> EmbeddedMongo | None:
    """Cleanly shut down the embedded mongod of ``data_dir``; return what was stopped, if any.

    Only a pid verified as our mongod (it reports that pid, or its command line names our
    dbpath) is signalled: a stale state file must not get an unrelated process killed.
    """
    data_dir = resolve_data_dir(data_dir)
    if not data_dir.is_dir():
        return None
    with _start_lock(data_dir):
        state = _read_state(data_dir)
        if state is None:
            return None
        target = running(data_dir)
        if target is None and _is_our_mongod(state["pid"], data_dir):
            target = EmbeddedMongo(data_dir, state["port"], state["pid"], started_here=False)
        if target is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target.pid, signal.SIGTERM)
            if not wait_pid_gone(target.pid, timeout):
                raise EmbeddedMongoError(
                    f"mongod (pid {target.pid}) did not shut down within {timeout:.0f} s"
                )
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return target


def _start(data_dir: Path, timeout: float) -> EmbeddedMongo:
    """Fork a detached mongod; ``--fork`` returns once it accepts connections.

    A free port can be taken between choosing it and mongod binding it: then try another.
    mongod's own ``mongod.lock`` refuses a second server on one dbpath and recovers from a
    crashed one's journal, so a stale lock needs no handling here.
    """
    binary = find_mongod()
    dbpath = data_dir / DB_SUBDIR
    dbpath.mkdir(exist_ok=True)
    log_path = data_dir / LOG_FILE
    for _attempt in range(3):
        port = free_port()
        log_start = log_path.stat().st_size if log_path.exists() else 0
        args = [*mongod_args(binary, dbpath, port, log_path), "--fork"]
        try:
            result = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedMongoError(
                f"mongod did not become ready within {timeout:.0f} s; see {log_path}"
            ) from None
        if result.returncode == 0:
            return _record_started(data_dir, port)
        tail = log_errors(log_path, since=log_start)
        if "already in use" not in tail:
            raise EmbeddedMongoError(_start_failure(dbpath, result.stdout, tail))
    raise EmbeddedMongoError(f"mongod could not bind a free port; see {log_path}")


def _record_started(data_dir: Path, port: int) -> EmbeddedMongo:
    status = mongo_status(port, _PING_TIMEOUT)
    if status is None:
        raise EmbeddedMongoError(f"mongod forked on port {port} but does not answer ping")
    pid = int(status["pid"])
    _write_state(data_dir, {"pid": pid, "port": port})
    return EmbeddedMongo(data_dir, port, pid, started_here=True)


def _start_failure(dbpath: Path, stdout: str, tail: str) -> str:
    """An error message with mongod's reason and, if another mongod holds the dbpath, its pid."""
    message = f"mongod failed to start:\n{stdout.strip()}\n{tail.strip()}"
    with contextlib.suppress(OSError, ValueError):
        holder = int((dbpath / "mongod.lock").read_text().strip())
        if pid_alive(holder):
            message += (
                f"\nanother mongod (pid {holder}) holds {dbpath}; stop it before starting a new one"
            )
    return message


def _await_existing(data_dir: Path, pid: int, timeout: float) -> EmbeddedMongo | None:
    """Our mongod is alive but silent (busy, recovering): wait for it rather than start another.

    None if it exits meanwhile, so the caller starts a fresh one.
    """
    deadline = time.monotonic() + timeout
    while _is_our_mongod(pid, data_dir):
        found = running(data_dir)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise EmbeddedMongoError(
                f"mongod pid {pid} on {data_dir} is alive but does not answer; "
                "stop it (scrapy mongo stop) and retry"
            )
        wait_pid_gone(pid, _PING_TIMEOUT)
    return None


def _is_our_mongod(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live mongod serving ``data_dir`` (Linux ``/proc``; False elsewhere)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return Path(argv[0]).name == "mongod" and str(data_dir / DB_SUBDIR) in argv


def _read_state(data_dir: Path) -> dict[str, int] | None:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        return {"pid": int(state["pid"]), "port": int(state["port"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(data_dir: Path, state: dict[str, int]) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = data_dir / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(data_dir / STATE_FILE)


@contextlib.contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    with (data_dir / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
