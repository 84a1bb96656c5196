"""Settings of tmapi-crawler; profiles in ``settings_profiles/`` overlay these.

Settings named in the README can also come from environment variables of the same name, so
a token or a database address never has to be written into a file or a command line.
"""

import os

from scrapy.settings import default_settings

from tmapi_crawler import api

BOT_NAME = "tmapi_crawler"
SPIDER_MODULES = ["tmapi_crawler.spiders"]
NEWSPIDER_MODULE = "tmapi_crawler.spiders"
COMMANDS_MODULE = "tmapi_crawler.commands"
#: A settings profile to overlay (settings_profiles/), where SCRAPY_PROJECT cannot pick one:
#: a Scrapyd job (`schedule.json ... -d setting=TMAPI_PROFILE=distributed`).
TMAPI_PROFILE = ""
ADDONS = {"tmapi_crawler.transport.addon.TmapiAddon": 0}

# The API.
TMAPI_TOKEN = os.environ.get("TMAPI_TOKEN", "")
TMAPI_BASE_URL = os.environ.get("TMAPI_BASE_URL", api.DEFAULT_BASE_URL)
#: The account's concurrency limit: never more API requests in flight than this.
TMAPI_CONCURRENCY = os.environ.get("TMAPI_CONCURRENCY", "4")
#: Who counts requests in flight: this process, or (distributed profile) the whole cluster.
TMAPI_LIMITER = "tmapi_crawler.transport.limiter.AdaptiveLimiter"
#: Successes needed to earn back one slot after a 503 lowered the limit.
TMAPI_THROTTLE_RECOVERY = 32
TMAPI_RETRY_TIMES = 8
TMAPI_RETRY_BASE_DELAY = 0.5
TMAPI_RETRY_MAX_DELAY = 30.0
#: Results a query can reach by paging; pages past it are never requested.
TMAPI_RESULT_CAP = os.environ.get("TMAPI_RESULT_CAP", "2000")

# Spend control (the budget: tmapi_crawler/transport/budget.py).
#: Paid calls one run may make, retries included (distributed: the whole cluster crawl's
#: session); 0: no budget. When spent, the crawl stops with tmapi_budget_exhausted, resumable.
TMAPI_MAX_REQUESTS = os.environ.get("TMAPI_MAX_REQUESTS", "0")
#: Who counts the budget: this process, or (distributed profile) the whole cluster.
TMAPI_BUDGET = "tmapi_crawler.transport.budget.LocalBudget"

# The frontier: which pages to fetch next (tmapi_crawler/frontier/).
#: Pages of one query queued or in flight at most; 0: twice TMAPI_CONCURRENCY (the add-on's
#: choice), so one query alone keeps every permit and the requests waiting for one busy.
TMAPI_QUERY_WINDOW = 0
#: What the frontier remembers between answers (a ``frontier.state.FrontierState``).
TMAPI_FRONTIER_STATE = "tmapi_crawler.frontier.state.MemoryState"
# Pages of one priority leave in the order they were queued, as the cluster's queue sends them
# (page order). Scrapy's LIFO sent a query's early pages last, and a window's page asks for
# the page a window further only when it is answered: the crawl ended in a chain of single
# calls, one round trip each (BENCHMARKS.md, B11).
SCHEDULER_MEMORY_QUEUE = "scrapy.squeues.FifoMemoryQueue"
SCHEDULER_DISK_QUEUE = "scrapy.squeues.PickleFifoDiskQueue"

# An API, not a web site.
ROBOTSTXT_OBEY = False
COOKIES_ENABLED = False
# Left out, not only off: its module imports tldextract and filelock, a tenth of start-up
# (BENCHMARKS.md, B12), for a middleware that would only say it is not configured.
DOWNLOADER_MIDDLEWARES_BASE = {
    path: order for path, order in default_settings.DOWNLOADER_MIDDLEWARES_BASE.items()
    if path != "scrapy.downloadermiddlewares.cookies.CookiesMiddleware"}
TELNETCONSOLE_ENABLED = False
USER_AGENT = "tmapi-crawler/0.1 (+https://github.com/tmapi-crawler)"
DOWNLOAD_TIMEOUT = api.MIN_TIMEOUT_SECONDS
# The API's calls go through aiohttp rather than Twisted's client: fewer hops between an answer
# and the next call (tmapi_crawler/transport/http.py).
DOWNLOAD_HANDLERS = {
    "http": "tmapi_crawler.transport.http.ApiDownloadHandler",
    "https": "tmapi_crawler.transport.http.ApiDownloadHandler",
}
REQUEST_FINGERPRINTER_IMPLEMENTATION = "2.7"
# An answer's output is one ProductPage (the pages it asks for go to the engine directly): Scrapy
# starts this many item tasks per answer whatever it yields (100 by default: 2 µs each, 42,000
# of them in B3's 420 pages).
CONCURRENT_ITEMS = 1
FEED_EXPORT_ENCODING = "utf-8"

# Feed exports (tmapi_crawler/exporters.py): flat records a buyer reads, from the pages of
# products the spider yields. The extension replaces Scrapy's FeedExporter (EXTENSIONS below).
#: "products": one record per product (deduplicated by item_id, titles per language crawled);
#: "sightings": one record per product per page it was seen on, with that query's context.
TMAPI_FEED_RECORDS = "products"
FEED_EXPORTERS = {
    "json": "tmapi_crawler.exporters.JsonExporter",
    "jsonlines": "tmapi_crawler.exporters.JsonLinesExporter",
    "jsonl": "tmapi_crawler.exporters.JsonLinesExporter",
    "jl": "tmapi_crawler.exporters.JsonLinesExporter",
    "csv": "tmapi_crawler.exporters.CsvExporter",
    "xml": "tmapi_crawler.exporters.XmlExporter",
}
LOG_FORMATTER = "tmapi_crawler.logformatter.LogFormatter"
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")

# Storage.
#: The batching writer; crawl runs are recorded by the extension below (storage/runs.py).
ITEM_PIPELINES = {"tmapi_crawler.storage.writer.MongoPipeline": 800}
#: Empty: start (or reuse) the embedded local mongod under MONGO_EMBEDDED_DIR.
MONGO_URI = os.environ.get("MONGO_URI", "")
MONGO_DATABASE = os.environ.get("MONGO_DATABASE", "tmapi")
MONGO_EMBEDDED_DIR = os.environ.get("MONGO_EMBEDDED_DIR", ".data/mongodb")
#: Where items go, as JSON lines, when MongoDB stayed unreachable for MONGO_RETRY_TIMEOUT.
MONGO_SPILL_DIR = ".data/unsaved"
MONGO_BATCH_SIZE = 100
MONGO_FLUSH_INTERVAL = 1.0
MONGO_RETRY_TIMEOUT = 300.0

# Stopping (tmapi_crawler/closing.py).
#: On a forced stop (a second Ctrl-C) how long saving what was parsed may take, and then
#: recording how the crawl ended; items MongoDB did not take by then go to MONGO_SPILL_DIR.
TMAPI_FORCED_STOP_TIMEOUT = 5.0

# Progress (tmapi_crawler/progress.py), the record of each crawl (storage/runs.py; it stays
# off when the writer is not in ITEM_PIPELINES) and feeds of products (exporters.py).
EXTENSIONS = {
    "tmapi_crawler.aio.FrozenStartup": 0,
    "tmapi_crawler.aio.RootLogLevel": 0,
    "tmapi_crawler.progress.ProgressReporter": 500,
    "tmapi_crawler.storage.runs.CrawlRunRecorder": 510,
    "tmapi_crawler.accounting.Completeness": 0,
    "tmapi_crawler.accounting.PageAccounting": 0,
    "tmapi_crawler.alerts.extension.AlertsExtension": 520,
    "scrapy.extensions.feedexport.FeedExporter": None,
    "tmapi_crawler.exporters.FeedExporter": 0,
}
# Scrapy 2.19's remote control runs Python sent over HTTP inside the crawl, where the token is
# in the settings (as the telnet console, off above). It is left out of Scrapy's base list
# rather than set to None in EXTENSIONS, where the add-on would import it (aiohttp's web
# server: a tenth of start-up, BENCHMARKS.md, B12) only to find it off.
EXTENSIONS_BASE = {path: order for path, order in default_settings.EXTENSIONS_BASE.items()
                   if path != "scrapy.extensions.remote_control.RemoteControl"}
#: Who records a run's end in crawl_runs: this process's crawl, or (distributed profile) a
#: worker's share of the cluster crawl.
TMAPI_RUN_FINISHER = "tmapi_crawler.storage.runs.RunFinisher"
#: Seconds between progress lines in the log; 0 turns progress reporting off entirely.
TMAPI_PROGRESS_INTERVAL = 30.0
#: A live progress bar on stderr, when stderr is a terminal.
TMAPI_PROGRESS_BAR = True

STATS_CLASS = "tmapi_crawler.stats.StatsFileCollector"
#: Empty: no stats file. Set it to write the final stats as JSON (scripts, CI, tests).
STATS_FILE = os.environ.get("STATS_FILE", "")

# Alerts (tmapi_crawler/alerts/): rules checked once a crawl's end is recorded.
#: A YAML file of Apprise URLs and rules (README, "Alerts"); empty: no alerts.
TMAPI_ALERTS_FILE = os.environ.get("TMAPI_ALERTS_FILE", "")
#: Seconds every delivery of a crawl's alerts may take together, retries included.
TMAPI_ALERTS_TIMEOUT = 10.0

# Distributed crawling: settings_profiles/distributed.py turns it on. Without REDIS_URL it uses
# the embedded Redis (tmapi_crawler/distributed/embedded.py), started on demand and left
# running like the embedded MongoDB (`scrapy redis stop`).
TMAPI_DISTRIBUTED = False
REDIS_EMBEDDED_DIR = os.environ.get("REDIS_EMBEDDED_DIR", ".data/redis")
