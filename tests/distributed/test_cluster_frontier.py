"""The cluster decides each query once (issue 13, point 4): real workers sharing the frontier's
state through Redis pay, for categories over the API's reach (split by price, walked past the
reach), what one process pays, and find what it finds: the sandbox's truth."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pymongo
import pytest

from tests.cluster import LIMIT, Env, Worker, finish, stored_products
from tests.inprocess import crawl_in_process
from tests.test_splitting import MODES, SMALL
from tmapi_crawler import api

REACH = 200
SPLIT = 11  # over the reach: split by price
WALKED = 12  # over the reach, sorted by price: walked past it
#: What tells the queries apart in the sandbox's records.
QUERY_FIELDS = ("cat_id", "sort", *api.PRICE_FILTERS, *api.FLAG_FILTERS)


@pytest.mark.parametrize("case", [(REACH, "capped"), (0, "true")],
                         ids=["cap configured, totals capped", "cap detected from the totals"])
def test_three_workers_pay_what_one_process_pays(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, tmp_path: Path, case: tuple[int, str],
) -> None:
    cap, totals = case
    env = start_env(latency=0.02, result_cap=REACH, size={SPLIT: 1300, WALKED: 700},
                    totals=totals)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"queries": [{"cat_id": SPLIT},
                                            {"cat_id": WALKED, "sort": "price_up"}]}))
    truth = {c: set(env.sandbox.truth(cat_id=c)["item_ids"]) for c in (SPLIT, WALKED)}
    settings = {"TMAPI_RESULT_CAP": cap, "TMAPI_CONCURRENCY": LIMIT}

    solo = crawl_in_process(tmp_path / "solo", f"plan={plan}", base_url=env.sandbox.url,
                            feed=True, settings={**settings, "LOG_LEVEL": "INFO"})
    assert solo.returncode == 0, solo.log[-3000:]
    solo_calls = env.sandbox.stats(records=False)["pages_served"]
    found = {c: {i["item_id"] for i in solo.items if i["context"]["cat_id"] == c}
             for c in truth}
    env.sandbox.reset()

    assert env.seed(f"plan={plan}").returncode == 0
    cluster = workers(env, 3, **settings)
    assert finish(cluster) == ["finished"] * 3
    billed = env.sandbox.stats()
    calls = billed["pages_served"]
    # The same calls, give or take the pages in flight when a query turned out to end sooner
    # than its window said (at most the limit); and, while the cap is not yet known, the pages
    # each planned query asked for past it (at most its window, twice the limit, for each of the
    # two). Each page of each query is fetched once.
    slack = LIMIT if cap else 2 * 2 * LIMIT
    assert abs(calls - solo_calls) <= slack, (calls, solo_calls)
    pages = Counter((*(r.get(f) for f in QUERY_FIELDS), r["page"])
                    for r in billed["records"] if r.get("ok"))
    assert max(pages.values()) == 1
    # Each query begun, split and walked once: one worker's decisions, not three.
    splits = sum(w.stats.get("tmapi/split/queries", 0) for w in cluster)
    assert splits == solo.stat("tmapi/split/queries")
    assert sum(w.stats.get("tmapi/queries/done", 0) for w in cluster) == solo.stat(
        "tmapi/queries/done")
    # The cluster's count of queries, splits included, is the process's.
    progress = env.status()["cluster_progress"]
    assert (progress["queries"], progress["queries_done"]) == (
        solo.stat("tmapi/queries"), solo.stat("tmapi/queries/done"))
    assert progress["queries"] > 2  # split
    if not cap:  # learned once, by the cluster as by the process
        assert "Paging reaches only 200 results" in solo.log
        assert sum("Paging reaches only 200 results" in w.log for w in cluster) == 1
    stored = set(stored_products(env, mongo_client))
    for cat_id, products in truth.items():
        assert len(found[cat_id] & products) >= 0.995 * len(products)
    assert stored == found[SPLIT] | found[WALKED]


#: The real API's ways that move paging decisions (tests/test_splitting.py has them all).
REAL_API_MODES = ("short pages", "promoted items", "a total of 1e12", "the last page forever")


@pytest.mark.parametrize("mode", REAL_API_MODES)
def test_two_workers_pay_what_one_process_pays_however_the_api_answers(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, tmp_path: Path, mode: str,
) -> None:
    env = start_env(latency=0.02, size={SMALL: 610}, **MODES[mode])
    truth = set(env.sandbox.truth(cat_id=SMALL)["item_ids"])
    settings = {"TMAPI_RESULT_CAP": REACH, "TMAPI_CONCURRENCY": LIMIT}
    solo = crawl_in_process(tmp_path / "solo", f"cat_id={SMALL}", base_url=env.sandbox.url,
                            feed=True, settings={**settings, "LOG_LEVEL": "INFO"})
    assert solo.returncode == 0, solo.log[-3000:]
    solo_calls = env.sandbox.stats(records=False)["pages_served"]
    env.sandbox.reset()

    assert env.seed(f"cat_id={SMALL}").returncode == 0
    cluster = workers(env, 2, **settings)
    assert finish(cluster) == ["finished"] * 2
    billed = env.sandbox.stats()
    # The same calls, give or take the pages in flight when the query turned out to end
    # sooner than its window said; each page once; everything found.
    assert abs(billed["pages_served"] - solo_calls) <= LIMIT, (billed["pages_served"], solo_calls)
    pages = Counter((*(r.get(f) for f in QUERY_FIELDS), r["page"])
                    for r in billed["records"] if r.get("ok"))
    assert max(pages.values()) == 1
    assert set(stored_products(env, mongo_client)) == truth
    stopped = sum(w.stats.get("tmapi/paging/stopped_queries", 0) for w in cluster)
    assert stopped == solo.stat("tmapi/paging/stopped_queries")
