"""B11-B13: one large query at the account's full speed (issue 24).

A user's most common crawl is one large category. B11 crawls one query of 260 pages, and the
same category walked past a cap of 2,000 results, beside the framework-free floor
(``tests/benchmarks/floor.py --one-query``: aiohttp, one bulk upsert per page, the same mongod)
in the same round; B12 times each process's start to its first call, beside bare Scrapy's;
B13 runs one query of 2,010 pages, walked past the cap as the real API's always is, by a single
process and by 1, 2 and 4 cluster workers.

The sandbox's latency varies from call to call (``LOW`` to ``LOW + JITTER``, uniformly), as a
real API's does; its limit is ``LIMIT``. Efficiency is pages per second while the API was in
use, over limit / mean latency.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from tests.benchmarks.run import (
    LIMIT,
    ROOT,
    TOKEN,
    Bench,
    at_the_limit,
    cluster_run,
    measure,
    warmed,
)
from tests.servers import RedisProcess
from tmapi_crawler.sandbox.process import SandboxProcess

#: Latency from LOW to LOW + JITTER: 200 ms ± 20 %.
LOW, JITTER = 0.16, 0.08
MEAN = LOW + JITTER / 2
ROUNDS = 5
#: 260 pages of 20.
PRODUCTS, CAP = 5_200, 2_000
#: B13: 2,010 pages of 20.
CLUSTER_PRODUCTS = 40_200


def _sandbox(cat_id: int, size: int, cap: int) -> SandboxProcess:
    return SandboxProcess(token=[TOKEN], latency=LOW, latency_jitter=JITTER,
                          concurrency_limit=LIMIT, size={cat_id: size}, result_cap=cap)


def _floor(bench: Bench, cat_id: int) -> dict[str, Any]:
    with _sandbox(cat_id, PRODUCTS, 0) as sandbox:
        warmed(sandbox, [cat_id])
        run = measure([sys.executable, "-m", "tests.benchmarks.floor", "--one-query",
                       "--base-url", sandbox.url, "--token", TOKEN,
                       "--mongo-uri", bench.mongod.uri, "--database", bench.database(),
                       "--cat-ids", str(cat_id), "--page-size", "20",
                       "--concurrency", str(LIMIT), "--batch-size", "1"], {}, ROOT)
        if run.returncode != 0:
            raise RuntimeError(f"the floor failed:\n{run.output[-3000:]}")
        return at_the_limit(sandbox, MEAN)


def _crawler(bench: Bench, cat_id: int, cap: int,
             settings: dict[str, Any] | None = None) -> dict[str, Any]:
    with _sandbox(cat_id, PRODUCTS, cap) as sandbox:
        warmed(sandbox, [cat_id])
        database = bench.database()
        run = bench.crawl(sandbox, [f"cat_id={cat_id}"], database,
                          {"TMAPI_CONCURRENCY": LIMIT, "TMAPI_RESULT_CAP": cap,
                           **(settings or {})})
        result = at_the_limit(sandbox, MEAN)
        first = sandbox.stats(records=False)["first_request_at"]
        truth = set(sandbox.truth(cat_id=cat_id)["item_ids"])
    if bench.stored(database) != len(truth):
        raise RuntimeError(f"stored {bench.stored(database)} of {len(truth)} products")
    return {**result, "start_up": first - run.started, "calls": run.stats["tmapi/requests"]}


def _summary(values: list[float]) -> str:
    return f"min {min(values):.3f}, median {statistics.median(values):.3f}"


def _where(runs: list[dict[str, Any]]) -> str:
    """Medians of where the time at the limit went (``timeline``)."""
    lost = "/".join(f"{statistics.median(run[f'lost_{phase}'] for run in runs):.3f}"
                    for phase in ("start", "middle", "end"))
    hand_off = statistics.median(run["hand_off_ms"] for run in runs)
    return f"lost at start/middle/end {lost}, hand-off {hand_off:.1f} ms"


def one_query(bench: Bench) -> dict[str, Any]:
    """B11: one query of 260 pages, and the same walked past a cap of 2,000, each beside the
    floor in the same round, ``ROUNDS`` times."""
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "query": [], "capped": []}
    for round_ in range(ROUNDS):
        cat_id = 11_001 + 10 * round_
        runs["floor"].append(_floor(bench, cat_id))
        runs["query"].append(_crawler(bench, cat_id + 2, 0))
        runs["capped"].append(_crawler(bench, cat_id + 4, CAP))
    floor = [run["efficiency"] for run in runs["floor"]]
    results: dict[str, Any] = {"floor": f"efficiency {_summary(floor)}; {_where(runs['floor'])}"}
    for name in ("query", "capped"):
        own = [run["efficiency"] for run in runs[name]]
        results[name] = (
            f"efficiency {_summary(own)}; of the floor "
            f"{_summary([o / f for o, f in zip(own, floor, strict=True)])}; "
            f"calls {sorted({run['calls'] for run in runs[name]})}; {_where(runs[name])}")
    every = [run for name in runs for run in runs[name]]
    results["guards"] = (f"503s ≤ {max(run['share_503'] for run in every)}, "
                         f"in flight ≤ {max(run['peak_in_flight'] for run in every)}")
    return results


def start_up(bench: Bench) -> dict[str, Any]:
    """B12: from a process's start to its first call, the project's (MongoDB running) beside
    bare Scrapy's (``tests/benchmarks/peer.py`` without a pipeline), ``ROUNDS`` times each."""
    project, bare = [], []
    spider = str(ROOT / "tests" / "benchmarks" / "peer.py")
    for round_ in range(ROUNDS):
        cat_id = 12_001 + 2 * round_
        with SandboxProcess(token=[TOKEN], size={cat_id: 20}) as sandbox:
            run = bench.crawl(sandbox, [f"cat_id={cat_id}"], bench.database())
            project.append(sandbox.stats(records=False)["first_request_at"] - run.started)
        with SandboxProcess(token=[TOKEN], size={cat_id: 20}) as sandbox:
            run = measure([sys.executable, "-m", "scrapy", "runspider", spider,
                           "-a", f"base_url={sandbox.url}", "-a", f"token={TOKEN}",
                           "-a", f"cat_ids={cat_id}", "-a", "page_size=20", "-a", "pages=1"],
                          {"PYTHONPATH": str(ROOT)}, bench.workdir)
            bare.append(sandbox.stats(records=False)["first_request_at"] - run.started)
    return {"project_s": _summary(project), "bare_scrapy_s": _summary(bare)}


def cluster_one_query(bench: Bench) -> dict[str, Any]:
    """B13: one query of 2,010 pages walked past a cap of 2,000 results: a single process,
    then 1, 2 and 4 workers sharing the limit, side by side, ``ROUNDS`` times."""
    redis = RedisProcess(bench.workdir / "redis", persistent=True).start()
    measured: dict[int, list[dict[str, Any]]] = {}
    options = {"latency": LOW, "latency_jitter": JITTER, "result_cap": CAP}
    pages = CLUSTER_PRODUCTS // 20
    try:
        for round_ in range(ROUNDS):
            for workers in (0, 1, 2, 4):
                cat_id = 13_001 + 100 * round_ + 10 * workers
                measured.setdefault(workers, []).append(cluster_run(
                    bench, redis, workers, [cat_id], prefix=f"b13x{round_}x{workers}",
                    sandbox_options={**options, "size": {cat_id: CLUSTER_PRODUCTS}},
                    pages=pages, settings={"TMAPI_RESULT_CAP": CAP}))
    finally:
        redis.stop()
    measured_single = measured.pop(0)
    single = [run["efficiency"] for run in measured_single]
    results: dict[str, Any] = {
        "single": f"efficiency {_summary(single)}; {_where(measured_single)}"}
    for workers, runs in measured.items():
        own = [run["efficiency"] for run in runs]
        results[f"workers_{workers}"] = (
            f"efficiency {_summary(own)}; of single "
            f"{_summary([o / s for o, s in zip(own, single, strict=True)])}; "
            f"503s ≤ {max(run['share_503'] for run in runs)}, "
            f"in flight ≤ {max(run['peak_in_flight'] for run in runs)}; {_where(runs)}")
    return results
