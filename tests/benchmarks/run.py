"""Run every benchmark against the sandbox and a real mongod; print one table.

    scripts/benchmark            # all of them (several minutes)
    scripts/benchmark B1 B3      # some of them

Each crawler runs as its own process; CPU time and peak RSS are that process's own (from
``wait4``), so the sandbox and mongod, which run beside it, are not counted. Ratios are
measured side by side in one run; absolute numbers are context only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.servers import MongodProcess

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "benchmark-" + os.urandom(8).hex()


@dataclass
class Measured:
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
    return Measured(usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
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


def limit_efficiency(bench: Bench, faults: dict[int, float]) -> dict[str, Any]:
    """B1/B2: pages/s against the ceiling limit / latency, at latency 200 ms and limit 8."""
    latency, limit, categories, size = 0.2, 8, 12, 500
    cats = list(range(3001, 3001 + 2 * categories, 2))  # not neighbours: no shared products
    with SandboxProcess(token=[TOKEN], latency=latency, concurrency_limit=limit,
                        default_size=size, fault=faults, fault_mode="mixed") as sandbox:
        database = bench.database()
        run = bench.crawl(sandbox, [f"cat_id={','.join(map(str, cats))}"], database,
                          {"TMAPI_CONCURRENCY": limit})
        answers = sandbox.stats(records=False)
        truth = set().union(*(sandbox.truth(cat_id=c)["item_ids"] for c in cats))
    pages = run.stats["tmapi/pages"]
    ceiling = limit / latency
    return {
        "pages": pages,
        "seconds": round(run.stats["elapsed_time_seconds"], 2),
        "efficiency": round(pages / run.stats["elapsed_time_seconds"] / ceiling, 3),
        "share_503": round(answers["answers"].get("503", 0) / answers["requests"], 4),
        "complete": round(bench.stored(database) / len(truth), 4),
        "peak_in_flight": answers["peak_in_flight"],
    }


def cpu_per_item(bench: Bench) -> dict[str, Any]:
    """B3: CPU seconds per 1,000 stored items: project, peer, bare Scrapy, framework-free floor."""
    cats, size, page_size, concurrency = list(range(4001, 4021, 2)), 2000, 50, 16
    pages = size // page_size
    items = len(cats) * size
    with SandboxProcess(token=[TOKEN], default_size=size, max_page_size=100) as sandbox:
        cat_list = ",".join(map(str, cats))
        project = bench.crawl(sandbox, [f"cat_id={cat_list}", f"page_size={page_size}"],
                              bench.database(), {"TMAPI_CONCURRENCY": concurrency})
        peer_args = ["-a", f"base_url={sandbox.url}", "-a", f"token={TOKEN}",
                     "-a", f"cat_ids={cat_list}", "-a", f"page_size={page_size}",
                     "-a", f"pages={pages}", "-s", "LOG_LEVEL=INFO",
                     "-s", f"CONCURRENT_REQUESTS={concurrency}",
                     "-s", f"CONCURRENT_REQUESTS_PER_DOMAIN={concurrency}"]
        spider = str(ROOT / "tests" / "benchmarks" / "peer.py")
        env = {"PYTHONPATH": str(ROOT)}
        outside = bench.workdir  # outside the project: Scrapy's defaults, not ours
        peer_db = bench.database()
        peer = measure([sys.executable, "-m", "scrapy", "runspider", spider, *peer_args,
                        "-s", "ITEM_PIPELINES={\"tests.benchmarks.peer.MongoPipeline\": 300}",
                        "-s", f"MONGO_URI={bench.mongod.uri}", "-s", f"MONGO_DATABASE={peer_db}"],
                       env, outside)
        bare = measure([sys.executable, "-m", "scrapy", "runspider", spider, *peer_args],
                       env, outside)
        floor_db = bench.database()
        floor = measure([sys.executable, "-m", "tests.benchmarks.floor",
                         "--base-url", sandbox.url, "--token", TOKEN,
                         "--mongo-uri", bench.mongod.uri, "--database", floor_db,
                         "--cat-ids", cat_list, "--pages", str(pages),
                         "--page-size", str(page_size), "--concurrency", str(concurrency)],
                        {}, ROOT)
    for name, run in (("peer", peer), ("bare", bare), ("floor", floor)):
        if run.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{run.output[-3000:]}")
    if bench.stored(peer_db, "scrapy_items") != items:
        raise RuntimeError("the peer did not store every item")
    per_k = {name: run.cpu / items * 1000 for name, run in
             (("project", project), ("peer", peer), ("bare", bare), ("floor", floor))}
    return {
        "items": items,
        **{f"cpu_per_1k_{k}": round(v, 3) for k, v in per_k.items()},
        "peer_over_project": round(per_k["peer"] / per_k["project"], 2),
        "project_over_bare": round(per_k["project"] / per_k["bare"], 2),
        "project_over_floor": round(per_k["project"] / per_k["floor"], 2),
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


BENCHMARKS: dict[str, tuple[str, Callable[[Bench], dict[str, Any]]]] = {
    "B1": ("limit efficiency (200 ms, limit 8, no faults)", lambda b: limit_efficiency(b, {})),
    "B2": ("under 10% mixed faults", lambda b: limit_efficiency(
        b, {417: 0.025, 499: 0.025, 500: 0.025, 503: 0.025})),
    "B3": ("CPU per 1,000 stored items", cpu_per_item),
    "B4": ("memory of one worker", memory),
}


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
