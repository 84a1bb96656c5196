"""The README's main job: crawl the bundled API sandbox into the embedded MongoDB, offline.

It runs the real ``scrapy crawl`` command — only the API endpoint (a local sandbox with
latency and injected faults) and the token (a sandbox one) differ from a production run.
Scrapy's log goes to a file whose path is printed; the terminal shows a progress bar, the
crawl's summary line, what the database holds and changed, and what to type next.

Each run moves the sandbox one step on (its price epoch; category 1031922 loses a few
products), so a second run has price changes and vanished products to show.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pymongo
from scrapy.utils.project import get_project_settings

from tmapi_crawler.commands.report import summary
from tmapi_crawler.folders import private_dir
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.servers import EmbeddedServerError, ServerNotFound
from tmapi_crawler.shell import PROJECT_ROOT, command_line
from tmapi_crawler.storage import embedded as embedded_mongo
from tmapi_crawler.storage.collections import CRAWL_RUNS

DEMO_TOKEN = "sandbox-demo-token"
DEMO_PLAN = PROJECT_ROOT / "examples" / "plan.yaml"
LOG_DIR = PROJECT_ROOT / ".data" / "logs"
#: The category that shrinks by this many products per demo run, down to half its size.
SHRINKING, SHRINK_BY, SIZE = 1031922, 4, 240


def shown(path: Path, cwd: Path) -> str:
    """A path as short as it can be from where the user is."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(cwd))
    return str(path)


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default=str(DEMO_PLAN), help="crawl plan (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="sandbox latency in seconds (default: %(default)s)")
    parser.add_argument("--faults", type=float, default=0.05,
                        help="share of answers that are 417/499/500/503 faults "
                             "(default: %(default)s)")
    args = parser.parse_args()
    user_cwd = Path.cwd()
    plan = Path(args.plan).resolve()
    os.chdir(PROJECT_ROOT)
    settings = get_project_settings()
    try:
        mongo = embedded_mongo.server(settings).ensure_running()
    except (ServerNotFound, EmbeddedServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    database = settings.get("MONGO_DATABASE")
    with pymongo.MongoClient(mongo.uri, tz_aware=True) as client:
        step = client[database][CRAWL_RUNS].count_documents({})
    log_file = LOG_DIR / f"demo-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.log"
    private_dir(log_file.parent)
    faults = {code: args.faults / 4 for code in (417, 499, 500, 503)}
    say("tmapi-crawler demo: the bundled API sandbox (offline, no token) crawled into the "
        "embedded MongoDB.")
    with SandboxProcess(token=[DEMO_TOKEN], latency=args.latency, fault=faults,
                        totals="capped") as sandbox:
        sandbox.configure(price_epoch=step,
                          sizes={str(SHRINKING): max(SIZE - SHRINK_BY * step, SIZE // 2)})
        say(f"  API sandbox  {sandbox.url} (latency {args.latency:g} s, {args.faults:.0%} "
            f"faults; run {step + 1}: prices and listings move on at each run)")
        say(f"  plan         {shown(plan, user_cwd)}")
        say(f"  MongoDB      {mongo.uri}, database {database!r} (data in "
            f"{shown(mongo.data_dir, user_cwd)}; it keeps running for your queries)")
        say(f"  log          {shown(log_file, user_cwd)}")
        env = {**os.environ, "TMAPI_TOKEN": DEMO_TOKEN, "TMAPI_BASE_URL": sandbox.url,
               "MONGO_URI": ""}
        crawl = subprocess.run(
            [sys.executable, "-m", "scrapy", "crawl", "category_items", "-a", f"plan={plan}",
             "-s", "TMAPI_CONCURRENCY=8", "-s", f"LOG_FILE={log_file}"],
            cwd=PROJECT_ROOT, env=env, check=False,
        )
    with pymongo.MongoClient(mongo.uri, tz_aware=True) as client:
        report = summary(client[database], mongo.uri)
    os.chdir(user_cwd)
    say()
    say(report)
    say()
    say("Next (from this folder, in any shell; nothing to activate):")
    steps = [
        (command_line("report"), "this report again"),
        (command_line("mongo", "shell"), "query the data in Python (README.md, \"Querying\")"),
        (command_line("mongo", "uri"), "the address for mongosh, Compass or your own code"),
        (command_line("serve"), "see it in a browser: catalogue, price history, movers, crawls"),
        (command_line("export", "products", "-O", "products.xlsx"),
         "the products as a spreadsheet (no API call)"),
        (command_line("mongo", "stop"), "stop the local MongoDB (its data stays)"),
        (str(Path(os.path.relpath(PROJECT_ROOT / "scripts" / "demo", user_cwd))),
         "again: the sandbox moves prices and listings on, so history has something to show"),
    ]
    width = max(len(line) for line, _ in steps)
    for line, what in steps:
        say(f"  {line:<{width}}  {what}")
    say("Crawl the real API: README.md, \"Crawling the real API\".")
    return crawl.returncode


if __name__ == "__main__":
    sys.exit(main())
