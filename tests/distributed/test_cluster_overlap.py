"""A cluster crawl and a local crawl of one of its categories at the same time (issue 21,
point 3): no listed product looks gone, and what is truly delisted is still marked vanished.

The local crawl runs against a second sandbox with the same catalogue, while the cluster's
sandbox holds its answers back mid-crawl: so it certainly stores its sightings of the category
between the cluster's first sightings and the cluster's end.
"""

from __future__ import annotations

from collections.abc import Callable

import pymongo

from tests.cluster import (
    CATEGORIES,
    Env,
    Worker,
    finish,
    joined_before_any_call,
    served,
    stalled_mid_crawl,
)
from tests.crawling import TOKEN, crawl
from tmapi_crawler.commands.status import describe
from tmapi_crawler.sandbox.process import SandboxProcess

SIZE = 200
SHRUNK = {"1": 180, "2": 180}


def test_a_local_crawl_during_a_cluster_crawl_makes_no_listed_product_look_gone(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env(latency=0.02, default_size=SIZE)
    db = mongo_client[env.database]
    everything = f"cat_id={','.join(map(str, CATEGORIES))}"
    first = crawl(env.tmp_path / "first", everything, base_url=env.sandbox.url,
                  mongo_uri=env.variables["MONGO_URI"], database=env.database)
    assert first.returncode == 0, first.log[-3000:]
    before = {c: set(env.sandbox.truth(cat_id=c)["item_ids"]) for c in CATEGORIES}
    env.sandbox.configure(sizes=SHRUNK)
    listed = {c: set(env.sandbox.truth(cat_id=c)["item_ids"]) for c in CATEGORIES}
    gone = {c: before[c] - listed[c] for c in CATEGORIES}
    assert len(gone[1]) == len(gone[2]) == 20

    assert env.seed(everything).returncode == 0
    start = served(env)
    cluster = joined_before_any_call(env, workers, 2, "cluster", stall_after=start + 10)
    with (SandboxProcess(token=[TOKEN], default_size=SIZE, size=SHRUNK) as other,
          stalled_mid_crawl(env, cluster, start + 10)):
        assert set(other.truth(cat_id=1)["item_ids"]) == listed[1], "the same catalogue"
        local = crawl(env.tmp_path / "local", "cat_id=1", base_url=other.url,
                      mongo_uri=env.variables["MONGO_URI"], database=env.database)
        assert local.returncode == 0, local.log[-3000:]
    assert finish(cluster) == ["finished"] * 2
    assert [w.wait() for w in cluster] == [0, 0]

    listed_vanished = {c: db.products.count_documents(
        {"_id": {"$in": sorted(listed[c])}, f"vanished.{c}": {"$exists": True}})
        for c in CATEGORIES}
    print(f"\ncluster + local: listed products marked vanished {listed_vanished}")
    assert listed_vanished == dict.fromkeys(CATEGORIES, 0)
    for cat_id in CATEGORIES:
        marked = db.products.find({f"vanished.{cat_id}": {"$exists": True}}, {"_id": 1})
        assert {d["_id"] for d in marked} == gone[cat_id]
    run = db.crawl_runs.find_one({"_id": env.status()["crawl_id"]})
    assert (run["complete"], run["incomplete"]) == (True, {})
    status = env.status()
    assert status["completeness"] == "complete"
    assert "  read       complete" in describe(status).splitlines()


def test_the_finaliser_of_an_incomplete_cluster_crawl_exits_3_the_other_workers_0(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env(default_size=60)
    env.sandbox.configure(fault_rates={"417": 1.0})  # every page given up, after no retry
    assert env.seed("cat_id=1,2").returncode == 0
    cluster = joined_before_any_call(env, workers, 2, "cluster", TMAPI_RETRY_TIMES=0)
    assert finish(cluster) == ["finished"] * 2
    codes = sorted(w.wait() for w in cluster)
    finalisers = [w for w in cluster if w.stats.get("tmapi/completeness/complete") is False]
    assert len(finalisers) == 1
    assert codes == [0, 3]
    run = mongo_client[env.database].crawl_runs.find_one({"_id": env.status()["crawl_id"]})
    assert run["complete"] is False
    assert sorted(run["incomplete"]) == ["1", "2"]
    for entry in run["incomplete"].values():
        assert (entry["reasons"], entry["stored"], entry["claimed"]) == (
            ["pages_given_up"], 0, None)
    status = env.status()
    assert status["completeness"] == "incomplete: categories 1 (pages_given_up), " \
        "2 (pages_given_up)"
