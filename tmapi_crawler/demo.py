"""The README's main job: crawl the bundled API sandbox into the embedded MongoDB, offline.

It runs the real ``scrapy crawl`` command — only the API endpoint (a local sandbox with
latency and injected faults) and the token (a sandbox one) differ from a production run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pymongo
from scrapy.utils.project import get_project_settings

from tmapi_crawler.commands.report import summary
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.storage.embedded import resolve_mongo_uri

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_TOKEN = "sandbox-demo-token"
DEMO_PLAN = PROJECT_ROOT / "examples" / "plan.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default=str(DEMO_PLAN), help="crawl plan (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.05, help="sandbox latency, seconds")
    parser.add_argument("--faults", type=float, default=0.05,
                        help="share of answers that are 417/499/500/503 faults")
    args = parser.parse_args()
    faults = {code: args.faults / 4 for code in (417, 499, 500, 503)}
    with SandboxProcess(token=[DEMO_TOKEN], latency=args.latency, fault=faults,
                        totals="capped") as sandbox:
        print(f"API sandbox at {sandbox.url}; crawling {args.plan}", file=sys.stderr, flush=True)
        env = {**os.environ, "TMAPI_TOKEN": DEMO_TOKEN, "TMAPI_BASE_URL": sandbox.url}
        crawl = subprocess.run(
            [sys.executable, "-m", "scrapy", "crawl", "category_items", "-a", f"plan={args.plan}",
             "-s", "TMAPI_CONCURRENCY=8"],
            cwd=PROJECT_ROOT, env=env, check=False,
        )
    os.chdir(PROJECT_ROOT)
    settings = get_project_settings()
    with pymongo.MongoClient(resolve_mongo_uri(settings), tz_aware=True) as client:
        print(summary(client[settings.get("MONGO_DATABASE") or "tmapi"]))
    print("Query it: scrapy mongo shell   (stop the local MongoDB: scrapy mongo stop)")
    return crawl.returncode


if __name__ == "__main__":
    sys.exit(main())
