"""Alerts of a cluster crawl: checked once, by the worker that finalises it, with its own
settings — never once per worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pymongo

from tests.cluster import CATEGORIES, Env, Worker, finish
from tests.webhook import Webhook
from tmapi_crawler import stats as stats_keys


def test_the_finaliser_alone_sends_the_crawls_alerts(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, tmp_path: Path,
) -> None:
    env = start_env(default_size=30)
    db = mongo_client[env.database]
    with Webhook() as hook:
        alerts = tmp_path / "alerts.yaml"
        alerts.write_text(f"notify: [{json.dumps(hook.url)}]\nrules: [{{kind: new}}]\n")
        assert env.seed(f"cat_id={','.join(map(str, CATEGORIES))}").returncode == 0
        cluster = workers(env, 2, "alerting", TMAPI_ALERTS_FILE=alerts)
        assert finish(cluster) == ["finished"] * 2
        messages = hook.take()
    crawl_id = env.status()["crawl_id"]
    products = db.products.count_documents({"first_crawl_id": crawl_id})
    assert products == db.products.count_documents({}) > 0
    assert [m["title"] for m in messages] == [f"tmapi: new products: {products} products"]
    assert messages[0]["message"].splitlines()[-1] == f"crawl {crawl_id}"
    run = db.crawl_runs.find_one({"_id": crawl_id})
    assert run["alerts"] == {"sent": 1, "failed": 0}
    sent_by = {w.stats[stats_keys.WORKER_ID]: w.stats.get(stats_keys.ALERTS_SENT)
               for w in cluster}
    assert sent_by == {run["completed_by"]: 1,
                       **{w: None for w in sent_by if w != run["completed_by"]}}
