"""Progress: the pure formatting and ETA, then real crawls — log lines and a bar on a real
pseudo-terminal. A cluster's progress is tested with the cluster (``test_distributed*.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pty
import re
import subprocess
import sys
import termios
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from tests.crawling import PROJECT_ROOT, TOKEN, crawl
from tmapi_crawler.progress import (
    ProgressReporter,
    eta_seconds,
    format_bar,
    format_duration,
    format_line,
)
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.stats import Progress, Rate

SIZES = {"401": 300, "402": 140}
#: `format_line`'s numbers, for reading them back out of a log.
LINE = re.compile(
    r"Progress: queries (?P<queries_done>\d+)/(?P<queries>\d+|\?) \| "
    r"pages (?P<pages_done>\d+)/(?P<pages_known>\d+|\?)(?: \([\d.]+%\))?(?:, (?P<failed>\d+) "
    r"failed)? \| sightings (?P<items>\d+): (?P<new>\d+) new products, (?P<updated>\d+) repeats, "
    r"(?P<rejected>\d+) rejected \| answers (?P<answers>[^|]*) \| calls (?P<calls>\d+)"
    r"(?:, budget (?P<budget>\d+), (?P<left>\d+) left)? \| (?P<rate>[\d.]+) pages/s"
    r"(?: \| ETA (?P<eta>[\d:]+|\?))?$"
)
BAR = re.compile(r"\[[#?-]{20}\]")


# The extension in-process.


def test_closing_ends_the_reporter_even_when_its_line_swallows_the_cancellation() -> None:
    """A cluster worker's line is read from Redis, and a cancellation can be swallowed inside
    that call: a worker then waited forever at close, its scheduler already gone."""

    class Scheduler:
        def __init__(self) -> None:
            self.entered = asyncio.Event()
            self.swallowed = False

        async def progress_line(self, *, final: bool = False) -> str:
            if final:
                return "the last line"
            self.entered.set()
            if self.swallowed:
                await asyncio.Event().wait()  # until cancelled
            self.swallowed = True
            with contextlib.suppress(asyncio.CancelledError):  # once, as inside redis-py
                await asyncio.Event().wait()
            return "a line"

    async def scenario() -> bool:
        crawler = get_crawler()
        crawler.engine = SimpleNamespace(scheduler=Scheduler())
        reporter = ProgressReporter(crawler, 0.01, None)
        reporter.spider_opened()
        await crawler.engine.scheduler.entered.wait()
        closing = asyncio.ensure_future(reporter.spider_closed())
        done, _ = await asyncio.wait({closing}, timeout=30)  # a hang fails, not the suite
        return closing in done

    assert asyncio.run(scenario())


# Pure functions.


def test_the_line_shows_every_counter() -> None:
    progress = Progress(queries=10, queries_done=3, pages=118, pages_failed=2, pages_known=340,
                        items=2400, stored=2390, new=1100, rejected=10,
                        calls=130, answers={"417": 3, "200": 125})
    assert format_line(progress, 12.5, 17.4) == (
        "queries 3/10 | pages 120/340 (35.3%), 2 failed | sightings 2400: 1100 new products, "
        "1290 repeats, 10 rejected | answers 200:125 417:3 | calls 130 | 12.5 pages/s | "
        "ETA 0:00:17"
    )
    assert format_line(Progress(), 0.0, None) == (
        "queries 0/? | pages 0/? | sightings 0: 0 new products, 0 repeats, 0 rejected | "
        "answers none | calls 0 | 0.0 pages/s | ETA ?"
    )
    budgeted = Progress(calls=130, budget=500)
    assert "| calls 130, budget 500, 370 left |" in format_line(budgeted, 1.0, None)
    # A cluster's workers share one budget: their calls add up, the budget does not.
    assert Progress.total([budgeted, budgeted]).budget == 500
    # A crawl that ended has no rate to show.
    assert format_line(progress, None, None, final=True).endswith("| calls 130")
    # A closing line: nothing left to wait for.
    assert format_line(progress, 12.5, None, final=True) == (
        "queries 3/10 | pages 120/340 (35.3%), 2 failed | sightings 2400: 1100 new products, "
        "1290 repeats, 10 rejected | answers 200:125 417:3 | calls 130 | 12.5 pages/s"
    )


def test_eta_is_the_known_pages_left_at_the_current_rate() -> None:
    progress = Progress(pages=90, pages_failed=10, pages_known=400)
    assert progress.pages_left == 300
    assert eta_seconds(progress, 12.0) == 25.0
    assert eta_seconds(progress, 0.0) is None, "no rate yet: no guess"
    assert eta_seconds(Progress(pages=5), 3.0) is None, "no known total: no guess"
    assert eta_seconds(Progress(pages=400, pages_known=400), 0.0) == 0.0
    assert eta_seconds(Progress(pages=410, pages_known=400), 1.0) == 0.0
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(100 * 3600) == "100:00:00"


def test_the_rate_covers_the_last_window() -> None:
    rate = Rate(window=60.0)
    assert rate.per_second() == 0.0
    rate.add(0.0, 0)
    rate.add(10.0, 100)
    assert rate.per_second() == 10.0
    for t in range(20, 200, 10):
        rate.add(float(t), 100 + (t - 10) * 2)  # 2 pages/s from t=10 on
    assert rate.per_second() == 2.0
    sparse = Rate(window=1.0)
    sparse.add(0.0, 0)
    sparse.add(30.0, 60)  # samples further apart than the window still give a rate
    assert sparse.per_second() == 2.0


def test_the_bar_fills_with_the_pages_done_and_fits_the_terminal() -> None:
    progress = Progress(pages=50, pages_known=200, items=1000, new=900)
    bar = format_bar(progress, 5.0, 30.0, 200)
    assert bar.startswith("[#####---------------]  25% 50/200 pages | 5.0/s | ETA 0:00:30")
    assert len(format_bar(progress, 5.0, 30.0, 30)) == 30
    assert format_bar(Progress(pages=3), 1.0, None, 200).startswith(f"[{'?' * 20}]")


def test_workers_add_up() -> None:
    total = Progress.total([
        Progress(queries=2, pages=5, answers={"200": 5, "417": 1}),
        Progress(pages=7, pages_known=20, answers={"200": 7}),
    ])
    assert total == Progress(queries=2, pages=12, pages_known=20, answers={"200": 12, "417": 1})


# Real crawls.


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES, latency=0.02) as server:
        yield server


def read_lines(log: str) -> list[dict[str, Any]]:
    lines = []
    for text in log.splitlines():
        if "Progress: " in text:
            match = LINE.search(text)
            assert match, text
            values: dict[str, Any] = match.groupdict()
            values["answers"] = dict(a.split(":") for a in values["answers"].split()
                                     if a != "none")
            lines.append(values)
    return lines


def matches_stats(line: dict[str, Any], stats: dict[str, Any]) -> None:
    """The closing progress line says what the final stats say."""
    assert int(line["queries"]) == stats["tmapi/queries"]
    assert int(line["queries_done"]) == stats["tmapi/queries/done"]
    assert int(line["pages_done"]) == (stats["tmapi/pages"] + stats.get("tmapi/pages/failed", 0)
                                       + stats.get("tmapi/resume/pages_held", 0))
    if stats["finish_reason"] == "finished":  # all its pages, whatever was known on the way
        assert line["pages_known"] == line["pages_done"]
    else:
        assert int(line["pages_known"]) == stats["tmapi/pages/known"]
    assert int(line["items"]) == stats["tmapi/items"]
    assert int(line["new"]) == stats["tmapi/db/created"]
    assert int(line["updated"]) == stats["tmapi/db/sightings"] - stats["tmapi/db/created"]
    assert int(line["rejected"]) == stats.get("tmapi/items/rejected", 0)
    answers = {k.removeprefix("tmapi/answers/"): v for k, v in stats.items()
               if k.startswith("tmapi/answers/")}
    assert {k: int(v) for k, v in line["answers"].items()} == answers
    assert line["eta"] is None  # the closing line: nothing is left to wait for


def test_progress_lines_in_the_log_add_up(sandbox, mongod, mongo_db_name, tmp_path: Path) -> None:
    sandbox.reset()
    sandbox.configure(fault_rates={417: 0.05})
    result = crawl(tmp_path, "cat_id=401,402", "language=en,zh", base_url=sandbox.url,
                   mongo_uri=mongod.uri, database=mongo_db_name,
                   settings={"TMAPI_PROGRESS_INTERVAL": "0.2", "LOG_LEVEL": "INFO"})
    sandbox.configure(fault_rates={})
    assert result.returncode == 0, result.log[-3000:]
    lines = read_lines(result.log)
    assert lines, "at least the closing line"
    counters = ("queries_done", "pages_done", "items", "new", "updated")
    for earlier, later in pairwise(lines):
        for name in counters:
            assert int(earlier[name]) <= int(later[name]), name
    for line in lines:
        assert int(line["queries_done"]) <= int(line["queries"])
        assert int(line["pages_done"]) <= int(line["pages_known"])
        assert int(line["new"]) + int(line["updated"]) + int(line["rejected"]) <= int(
            line["items"])
    matches_stats(lines[-1], result.stats)
    assert result.stats["tmapi/db/sightings"] > result.stats["tmapi/db/created"] > 0


def test_progress_can_be_turned_off(sandbox, tmp_path: Path) -> None:
    result = crawl(tmp_path, "cat_id=402", base_url=sandbox.url, store=False,
                   settings={"TMAPI_PROGRESS_INTERVAL": "0", "LOG_LEVEL": "INFO"})
    assert result.returncode == 0
    assert "Progress: " not in result.log
    assert "ProgressReporter" not in result.log.split("Enabled extensions:")[1].split("]")[0]


def read_terminal(controller: int) -> bytes:
    """The next output on the terminal; b"" once the child closed it (EIO on Linux)."""
    try:
        return os.read(controller, 65536)
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return b""


def run_on_a_terminal(tmp_path: Path, base_url: str, *arguments: str) -> tuple[int, str]:
    """A crawl whose stderr is a pseudo-terminal (120 columns); everything it drew there."""
    command = [sys.executable, "-m", "scrapy", "crawl", "category_items"]
    for argument in arguments:
        command += ["-a", argument]
    for name, value in {"TMAPI_PROGRESS_INTERVAL": "0.2", "LOG_LEVEL": "INFO",
                        "ITEM_PIPELINES": "{}", "TMAPI_RETRY_BASE_DELAY": "0.01"}.items():
        command += ["-s", f"{name}={value}"]
    env = {**os.environ, "TMAPI_TOKEN": TOKEN, "TMAPI_BASE_URL": base_url}
    controller, terminal = pty.openpty()
    termios.tcsetwinsize(terminal, (40, 120))
    with subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=terminal) as process:
        os.close(terminal)
        received = bytearray()
        while chunk := read_terminal(controller):
            received += chunk
        returncode = process.wait(timeout=60)
    os.close(controller)
    # The terminal turns "\n" into "\r\n"; undo it so a "\r" is the bar's own.
    return returncode, received.decode(errors="replace").replace("\r\n", "\n")


def test_on_a_terminal_a_live_bar_is_drawn_between_log_lines_and_cleared(
    sandbox, tmp_path: Path
) -> None:
    sandbox.reset()
    returncode, output = run_on_a_terminal(tmp_path, sandbox.url, "cat_id=401,402",
                                           "language=en,zh,ru")
    assert returncode == 0, output[-3000:]
    draws = [m.start() for m in re.finditer(r"\r" + BAR.pattern, output)]
    assert draws, "the bar is drawn from the start"
    assert output.rfind("\r\x1b[K") > draws[-1], "and cleared at the end"
    for drawn in re.findall(r"\r(" + BAR.pattern + r"[^\r\n]*?)\x1b\[K", output):
        assert len(drawn) < 120, "never wider than the terminal"
    for line in output.split("\n"):
        visible = line.rsplit("\r", 1)[-1]  # what stays on the screen
        assert not (BAR.search(visible) and "INFO" in visible), repr(line)
    assert not BAR.search(output.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]), "nothing left"
    assert "Progress: queries" in output


def test_without_a_terminal_there_is_no_bar(sandbox, tmp_path: Path) -> None:
    result = crawl(tmp_path, "cat_id=402", base_url=sandbox.url, store=False,
                   settings={"TMAPI_PROGRESS_INTERVAL": "0.2", "LOG_LEVEL": "INFO"})
    assert result.returncode == 0
    assert "\r" not in result.log
