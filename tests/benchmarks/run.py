"""Run every benchmark against the sandbox and a real mongod; print one table.

    scripts/benchmark            # all of them (several minutes)
    scripts/benchmark B1 B3      # some of them

Each crawler runs as its own process; CPU time and peak RSS are that process's own (from
``wait4``), so the sandbox and mongod, which run beside it, are not counted. Ratios are
measured side by side in one run; absolute numbers are context only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from tests.benchmarks.export import export_products
from tests.benchmarks.prices import price_stats_cost
from tests.benchmarks.timeline import timeline
from tests.benchmarks.web import web_app
from tests.servers import MongodProcess, RedisProcess
from tmapi_crawler.sandbox.process import SandboxProcess

ROOT = Path(__file__).resolve().parents[2]
TOKEN = f"benchmark-{os.getpid()}"  # the same in __main__ and in an import of this module


@dataclass
class Measured:
    started: float  # time.monotonic() when the process was started
    cpu: float
    max_rss_mb: float
    wall: float
    returncode: int
    stats: dict[str, Any] = field(default_factory=dict)
    output: str = ""


def measure(command: list[str], env: dict[str, str], cwd: Path, stats_file: Path | None = None
            ) -> Measured:
    """Run a command to its end; its own CPU seconds and peak RSS, not its neighbours'."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env},
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    stats = json.loads(stats_file.read_text()) if stats_file and stats_file.exists() else {}
    return Measured(started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                    time.monotonic() - started, process.returncode, stats, output)


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mongod = MongodProcess(workdir / "mongod").start()
        self.runs = 0

    def database(self) -> str:
        self.runs += 1
        return f"bench{self.runs}"

    def crawl(self, sandbox: SandboxProcess, arguments: list[str], database: str,
              settings: dict[str, Any] | None = None) -> Measured:
        """The project's own ``scrapy crawl``, as a user runs it."""
        stats_file = self.workdir / f"{database}-stats.json"
        command = [sys.executable, "-m", "scrapy", "crawl", "category_items", "-s",
                   f"STATS_FILE={stats_file}", "-s", "LOG_LEVEL=INFO"]
        for argument in arguments:
            command += ["-a", argument]
        for name, value in (settings or {}).items():
            command += ["-s", f"{name}={value}"]
        env = {"TMAPI_TOKEN": TOKEN, "TMAPI_BASE_URL": sandbox.url,
               "MONGO_URI": self.mongod.uri, "MONGO_DATABASE": database}
        result = measure(command, env, ROOT, stats_file)
        if result.returncode != 0:
            raise RuntimeError(f"crawl failed:\n{result.output[-3000:]}")
        return result

    def stored(self, database: str, collection: str = "products") -> int:
        with pymongo.MongoClient(self.mongod.uri) as client:
            return client[database][collection].count_documents({})

    def close(self) -> None:
        self.mongod.stop()


def efficiency(sandbox: SandboxProcess, limit: int, latency: float) -> dict[str, Any]:
    """Pages per second while the API was in use (first request to last answer), against
    the ceiling limit / latency, and the share of 503 answers."""
    stats = sandbox.stats(records=False)
    pages = stats["pages_served"]
    return {
        "pages": pages,
        "efficiency": round(pages / stats["busy_seconds"] / (limit / latency), 3),
        "share_503": round(stats["answers"].get("503", 0) / stats["requests"], 4),
        "peak_in_flight": stats["peak_in_flight"],
    }


def at_the_limit(sandbox: SandboxProcess, latency: float) -> dict[str, Any]:
    """``efficiency`` at a limit of ``LIMIT``, and where the time went (``timeline``)."""
    return {**efficiency(sandbox, LIMIT, latency),
            **timeline(sandbox.stats()["records"], LIMIT)}


LATENCY, LIMIT, PAGES_PER_CATEGORY = 0.2, 8, 25
REPEAT = 5


def categories(count: int, first: int) -> list[int]:
    """Category ids that are not neighbours: the sandbox shares products between neighbours."""
    return list(range(first, first + 2 * count, 2))


def warmed(sandbox: SandboxProcess, cats: list[int]) -> SandboxProcess:
    """The sandbox with the categories' catalogues built before the crawl is timed.

    The sandbox builds a category on its first request, 2-5 ms of its only event loop, while
    every other request waits to be read: sixteen categories made the first calls reach it
    5 ms apart, a cost of the model that no real API has and that B1 counted against the
    crawler. Every side of a comparison starts warmed alike.
    """
    for cat_id in cats:
        sandbox.truth(cat_id=cat_id)
    return sandbox


#: Scrapy's default HTTP client, measured beside the project's (tmapi_crawler/transport/http.py).
TWISTED_CLIENT = json.dumps(dict.fromkeys(
    ("http", "https"), "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler"))


def limit_efficiency(bench: Bench, faults: dict[int, float]) -> dict[str, Any]:
    """B1/B2: one process at latency 200 ms and a limit of 8, 400 pages; then (B1) the same
    crawl through Twisted's HTTP client instead of aiohttp, side by side."""
    cats = categories(16, 3001)
    with SandboxProcess(token=[TOKEN], latency=LATENCY, concurrency_limit=LIMIT,
                        default_size=PAGES_PER_CATEGORY * 20, fault=faults,
                        fault_mode="mixed") as sandbox:
        warmed(sandbox, cats)
        database = bench.database()
        run = bench.crawl(sandbox, [f"cat_id={','.join(map(str, cats))}"], database,
                          {"TMAPI_CONCURRENCY": LIMIT})
        result = efficiency(sandbox, LIMIT, LATENCY)
        truth = set().union(*(sandbox.truth(cat_id=c)["item_ids"] for c in cats))
    whole_run = run.stats["tmapi/pages"] / run.stats["elapsed_time_seconds"] / (LIMIT / LATENCY)
    result = {**result, "efficiency_whole_run": round(whole_run, 3),
              "complete": round(bench.stored(database) / len(truth), 4)}
    if not faults:
        with SandboxProcess(token=[TOKEN], latency=LATENCY, concurrency_limit=LIMIT,
                            default_size=PAGES_PER_CATEGORY * 20) as sandbox:
            other = categories(16, 3101)
            bench.crawl(warmed(sandbox, other), [f"cat_id={','.join(map(str, other))}"],
                        bench.database(),
                        {"TMAPI_CONCURRENCY": LIMIT, "DOWNLOAD_HANDLERS": TWISTED_CLIENT})
            twisted = efficiency(sandbox, LIMIT, LATENCY)["efficiency"]
        result |= {"efficiency_twisted_client": twisted,
                   "aiohttp_over_twisted": round(result["efficiency"] / twisted, 3)}
    return result


#: B5 rounds: each runs a single process and then 1, 2 and 4 workers on the same work.
B5_ROUNDS = 5
#: B5's categories (of ``PAGES_PER_CATEGORY`` pages): 400 pages, 10 s at the limit.
B5_CATEGORIES = 16
#: B5L's: 1,600 pages, 40 s at the limit. A crawl's first and last few answers (workers
#: starting, the last calls' answers coming in one by one) cost the same whatever its length;
#: in 10 s they weigh four times what they do in 40 s (BENCHMARKS.md, seventh round).
B5L_CATEGORIES = 64


def distributed(bench: Bench, count: int = B5_CATEGORIES) -> dict[str, Any]:
    """B5 (B5L): a single process, then 1, 2 and 4 workers on this machine sharing one limit
    of 8 at 200 ms, ``count`` categories each, side by side, ``B5_ROUNDS`` times; the spread
    of each."""
    redis = RedisProcess(bench.workdir / "redis", persistent=True).start()
    measured: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_ in range(B5_ROUNDS):
            for workers in (0, 1, 2, 4):  # 0: the single process
                # Every crawl its own categories (B5's as they always were).
                first = 6001 + 100 * max(1, count // B5_CATEGORIES) * (10 * round_ + workers)
                measured.setdefault(f"workers_{workers}" if workers else "single", []).append(
                    _b5_run(bench, redis, workers, categories(count, first),
                            f"bench{round_}x{workers}"))
    finally:
        redis.stop()
    single = [run["efficiency"] for run in measured.pop("single")]
    results: dict[str, Any] = {"single": _spread(single)}
    for name, runs in measured.items():
        efficiencies = [run["efficiency"] for run in runs]
        results[name] = (
            f"efficiency {_spread(efficiencies)}, vs single "
            f"{_spread([e / s for e, s in zip(efficiencies, single, strict=True)])}, "
            f"503s ≤ {max(run['share_503'] for run in runs)}, "
            f"peak ≤ {max(run['peak_in_flight'] for run in runs)}")
    return results


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def _b5_run(bench: Bench, redis: RedisProcess, workers: int, category_ids: list[int],
            prefix: str) -> dict[str, Any]:
    """One B5 crawl: ``workers`` distributed workers, or (0) one local process."""
    return cluster_run(bench, redis, workers, category_ids, prefix=prefix,
                       sandbox_options={"latency": LATENCY,
                                        "default_size": PAGES_PER_CATEGORY * 20},
                       pages=len(category_ids) * PAGES_PER_CATEGORY)


def cluster_run(bench: Bench, redis: RedisProcess, workers: int, category_ids: list[int], *,
                prefix: str, sandbox_options: dict[str, Any], pages: int,
                settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One crawl of ``category_ids`` by ``workers`` distributed workers, or (0) one local
    process, against a sandbox with a limit of ``LIMIT``; its efficiency at the sandbox's mean
    latency. ``pages``: the pages it must have fetched."""
    cats = ",".join(map(str, category_ids))
    settings = {"TMAPI_CONCURRENCY": LIMIT, **(settings or {})}
    latency = sandbox_options["latency"] + sandbox_options.get("latency_jitter", 0) / 2
    with SandboxProcess(token=[TOKEN], concurrency_limit=LIMIT, **sandbox_options) as sandbox:
        warmed(sandbox, category_ids)
        if not workers:
            bench.crawl(sandbox, [f"cat_id={cats}"], bench.database(), settings)
        else:
            env = {**os.environ, "SCRAPY_PROJECT": "distributed", "REDIS_URL": redis.uri,
                   "TMAPI_REDIS_PREFIX": prefix, "TMAPI_TOKEN": TOKEN,
                   "TMAPI_BASE_URL": sandbox.url, "MONGO_URI": bench.mongod.uri,
                   "MONGO_DATABASE": bench.database()}
            options = [part for name, value in settings.items()
                       for part in ("-s", f"{name}={value}")]
            subprocess.run([sys.executable, "-m", "scrapy", "seed", "category_items",
                            "-a", f"cat_id={cats}", *options], cwd=ROOT, env=env, check=True,
                           capture_output=True)
            crawl = [sys.executable, "-m", "scrapy", "crawl", "category_items", *options,
                     "-s", "LOG_LEVEL=INFO", "-s", "MAX_IDLE_TIME_BEFORE_CLOSE=2"]
            processes = [subprocess.Popen(crawl, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL) for _ in range(workers)]
            if any(p.wait() for p in processes):
                raise RuntimeError(f"a worker of {workers} failed")
        result = at_the_limit(sandbox, latency)
    if result["pages"] < pages:
        raise RuntimeError(f"{workers} workers fetched only {result['pages']} pages")
    return result


def cpu_per_item(bench: Bench) -> dict[str, Any]:
    """B3: CPU seconds per 1,000 stored items: project, peer, bare Scrapy, framework-free floor."""
    cats, size, page_size, concurrency = list(range(4001, 4021, 2)), 2000, 50, 16
    pages = size // page_size
    items = len(cats) * size
    with SandboxProcess(token=[TOKEN], default_size=size, max_page_size=100) as sandbox:
        cat_list = ",".join(map(str, cats))

        def peer_arguments(cat_list: str, pages: int) -> list[str]:
            return ["-a", f"base_url={sandbox.url}", "-a", f"token={TOKEN}",
                    "-a", f"cat_ids={cat_list}", "-a", f"page_size={page_size}",
                    "-a", f"pages={pages}", "-s", "LOG_LEVEL=INFO",
                    "-s", f"CONCURRENT_REQUESTS={concurrency}",
                    "-s", f"CONCURRENT_REQUESTS_PER_DOMAIN={concurrency}"]

        peer_args = peer_arguments(cat_list, pages)
        spider = str(ROOT / "tests" / "benchmarks" / "peer.py")
        env = {"PYTHONPATH": str(ROOT)}
        outside = bench.workdir  # outside the project: Scrapy's defaults, not ours
        runs: dict[str, list[Measured]] = {"project": [], "peer": [], "bare": [], "floor": [],
                                           "project_start": [], "bare_start": []}
        # CPU time on a shared machine varies by tens of percent from run to run: each is
        # run REPEAT times, interleaved, and the least CPU of each counts.
        for _ in range(REPEAT):
            # Start-up alone: the same commands fetching one page of one category.
            runs["project_start"].append(bench.crawl(
                sandbox, [f"cat_id={cats[0]}", f"page_size={page_size}", "max_pages=1"],
                bench.database(), {"TMAPI_CONCURRENCY": concurrency}))
            runs["bare_start"].append(measure(
                [sys.executable, "-m", "scrapy", "runspider", spider,
                 *peer_arguments(str(cats[0]), 1)], env, outside))
            runs["project"].append(bench.crawl(
                sandbox, [f"cat_id={cat_list}", f"page_size={page_size}"], bench.database(),
                {"TMAPI_CONCURRENCY": concurrency}))
            peer_db = bench.database()
            runs["peer"].append(measure(
                [sys.executable, "-m", "scrapy", "runspider", spider, *peer_args,
                 "-s", "ITEM_PIPELINES={\"tests.benchmarks.peer.MongoPipeline\": 300}",
                 "-s", f"MONGO_URI={bench.mongod.uri}", "-s", f"MONGO_DATABASE={peer_db}"],
                env, outside))
            if bench.stored(peer_db, "scrapy_items") != items:
                raise RuntimeError("the peer did not store every item")
            runs["bare"].append(measure(
                [sys.executable, "-m", "scrapy", "runspider", spider, *peer_args], env, outside))
            runs["floor"].append(measure(
                [sys.executable, "-m", "tests.benchmarks.floor", "--base-url", sandbox.url,
                 "--token", TOKEN, "--mongo-uri", bench.mongod.uri,
                 "--database", bench.database(), "--cat-ids", cat_list, "--pages", str(pages),
                 "--page-size", str(page_size), "--concurrency", str(concurrency)], {}, ROOT))
    for name, measured in runs.items():
        if failed := [m for m in measured if m.returncode != 0]:
            raise RuntimeError(f"{name} failed:\n{failed[0].output[-3000:]}")
    least = {name: min(m.cpu for m in measured) for name, measured in runs.items()}
    per_k = {name: least[name] / items * 1000 for name in ("project", "peer", "bare", "floor")}
    # Beyond start-up: the least CPU of a one-page run taken off (issue 24's measure); and
    # the same with medians.
    beyond = {name: (least[name] - least[f"{name}_start"]) / items * 1000
              for name in ("project", "bare")}
    middle = {name: statistics.median(m.cpu for m in measured)
              for name, measured in runs.items()}
    beyond_median = {name: (middle[name] - middle[f"{name}_start"]) / items * 1000
                     for name in ("project", "bare")}
    return {
        "items": items,
        **{f"cpu_per_1k_{k}": round(v, 3) for k, v in per_k.items()},
        "peer_over_project": round(per_k["peer"] / per_k["project"], 2),
        "project_over_bare": round(per_k["project"] / per_k["bare"], 2),
        "project_over_floor": round(per_k["project"] / per_k["floor"], 2),
        "start_up_cpu_s_project": round(least["project_start"], 3),
        "start_up_cpu_s_bare": round(least["bare_start"], 3),
        **{f"beyond_start_up_per_1k_{k}": round(v, 3) for k, v in beyond.items()},
        "beyond_start_up_project_over_bare": round(beyond["project"] / beyond["bare"], 2),
        **{f"beyond_start_up_median_per_1k_{k}": round(v, 3) for k, v in beyond_median.items()},
        "beyond_start_up_median_project_over_bare": round(
            beyond_median["project"] / beyond_median["bare"], 2),
    }


def memory(bench: Bench) -> dict[str, Any]:
    """B4: peak RSS of one worker over 5,000 and 50,000 pages (latency 0)."""
    rss = {}
    for pages in (5_000, 50_000):
        categories, size = pages // 2500, 50_000
        cats = ",".join(str(5001 + 2 * i) for i in range(categories))
        with SandboxProcess(token=[TOKEN], default_size=size, result_cap=0) as sandbox:
            run = bench.crawl(sandbox, [f"cat_id={cats}"], bench.database(),
                              {"TMAPI_CONCURRENCY": 16, "TMAPI_RESULT_CAP": 0})
        if run.stats["tmapi/pages"] < pages:
            raise RuntimeError(f"only {run.stats['tmapi/pages']} pages crawled")
        rss[pages] = run.max_rss_mb
    return {
        "rss_mb_5k_pages": round(rss[5_000], 1),
        "rss_mb_50k_pages": round(rss[50_000], 1),
        "growth": round(rss[50_000] / rss[5_000] - 1, 3),
    }


def capped_categories(bench: Bench) -> dict[str, Any]:
    """B6: calls and coverage for categories over a reach of 2,000, with the API's totals true
    or capped at the reach, against the ideal ⌈products / page size⌉ (page size 20)."""
    results: dict[str, Any] = {}
    reach, page_size = 2000, 20
    for totals in ("true", "capped"):
        for size in (5_000, 30_000):
            cat_id = 7001
            with SandboxProcess(token=[TOKEN], result_cap=reach, totals=totals,
                                size={cat_id: size}) as sandbox:
                database = bench.database()
                bench.crawl(sandbox, [f"cat_id={cat_id}"], database,
                            {"TMAPI_RESULT_CAP": reach, "TMAPI_CONCURRENCY": 8})
                calls = sandbox.stats(records=False)["requests"]
                truth = set(sandbox.truth(cat_id=cat_id)["item_ids"])
            with pymongo.MongoClient(bench.mongod.uri) as client:
                stored = {d["_id"] for d in client[database].products.find({}, {"_id": 1})}
            ideal = -(-size // page_size)
            results[f"{totals}_{size // 1000}k"] = (
                f"calls {calls}, ideal {ideal}, ratio {calls / ideal:.3f}, "
                f"coverage {len(stored & truth) / len(truth):.4f}")
    return results


KILL_RUNS, KILL_CONCURRENCY = 5, 4


def paid_twice_after_a_kill(bench: Bench) -> dict[str, Any]:
    """B7: a crawl SIGKILLed mid-way, then the same command again (it resumes): the pages
    the sandbox billed more than once across both runs, against ``TMAPI_CONCURRENCY``. Each
    run is killed at a different point (20, 27, 34... pages in the ledger)."""
    twice, complete = [], []
    with SandboxProcess(token=[TOKEN], size={"101": 1000, "102": 1000}, latency=0.1) as sandbox, \
            pymongo.MongoClient(bench.mongod.uri) as client:
        for n in range(KILL_RUNS):
            database = bench.database()
            before = Counter(_billed(sandbox))
            env = {**os.environ, "TMAPI_TOKEN": TOKEN, "TMAPI_BASE_URL": sandbox.url,
                   "MONGO_URI": bench.mongod.uri, "MONGO_DATABASE": database}
            command = [sys.executable, "-m", "scrapy", "crawl", "category_items",
                       "-a", "cat_id=101,102", "-a", "language=en,ru",
                       "-s", f"TMAPI_CONCURRENCY={KILL_CONCURRENCY}", "-s", "LOG_LEVEL=INFO"]
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            while client[database]["crawl_pages"].count_documents({}) < 20 + 7 * n:
                if process.poll() is not None:
                    raise RuntimeError("the crawl ended before it could be killed")
                time.sleep(0.01)
            process.kill()
            process.wait()
            subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
            paid = Counter(_billed(sandbox)) - before
            twice.append(sum(count - 1 for count in paid.values()))
            complete.append(len(paid) == 200)
    return {"concurrency": KILL_CONCURRENCY, "paid_twice": twice, "max": max(twice),
            "every_page_paid": all(complete)}


def _billed(sandbox: SandboxProcess) -> list[tuple[Any, ...]]:
    return [(r["cat_id"], r["language"], r["page"]) for r in sandbox.stats()["records"]
            if "cat_id" in r and r["ok"]]


BENCHMARKS: dict[str, tuple[str, Callable[[Bench], dict[str, Any]]]] = {
    "B1": ("limit efficiency (200 ms, limit 8, no faults)", lambda b: limit_efficiency(b, {})),
    "B2": ("under 10% mixed faults", lambda b: limit_efficiency(
        b, {417: 0.025, 499: 0.025, 500: 0.025, 503: 0.025})),
    "B3": ("CPU per 1,000 stored items", cpu_per_item),
    "B4": ("memory of one worker", memory),
    "B5": ("distributed: workers sharing one limit, beside a single process", distributed),
    "B5L": ("B5 on a crawl four times as long", lambda b: distributed(b, B5L_CATEGORIES)),
    "B6": ("capped categories: calls and coverage against the ideal", capped_categories),
    "B7": ("pages paid twice after a SIGKILL and a resume", paid_twice_after_a_kill),
    "B8": ("web app over 1,000,000 generated products", web_app),
    "B9": ("the writer per 1,000 products with and without price_stats", price_stats_cost),
    "B10": ("export of 1,000,000 stored products to CSV and XLSX, beside a bare pymongo loop",
            export_products),
    "B11": ("one query of 260 pages, and walked past a cap, beside the floor",
            lambda b: _one_query().one_query(b)),
    "B12": ("start-up to the first call, beside bare Scrapy", lambda b: _one_query().start_up(b)),
    "B13": ("one query of 2,010 pages walked past the cap: 1, 2 and 4 workers beside one process",
            lambda b: _one_query().cluster_one_query(b)),
}


def _one_query() -> Any:
    """B11-B13's module, imported late: it builds on this one's helpers."""
    return importlib.import_module("tests.benchmarks.one_query")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="benchmark ids (default: all)")
    names = parser.parse_args().only or list(BENCHMARKS)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {platform.platform()}")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(Path(workdir))
        try:
            for name in names:
                title, run = BENCHMARKS[name]
                print(f"running {name}: {title} ...", file=sys.stderr, flush=True)
                rows.append((name, title, run(bench)))
        finally:
            bench.close()
    print("\n| id | benchmark | results |\n| --- | --- | --- |")
    for name, title, result in rows:
        cells = ", ".join(f"{k} {v}" for k, v in result.items())
        print(f"| {name} | {title} | {cells} |")


if __name__ == "__main__":
    main()
