"""Signals of the crawl, for components that need to know when a page's work is done, and
when the crawl stops.

A page is done when its follow-up requests are queued and every product it carried is
settled: stored, or kept in ``rejected_items``. A distributed queue acknowledges its lease only
then, so a worker that dies before that point loses nothing.

Who sends each one, when, and who listens: docs/reference/signals.md.
"""

#: Sent by the spider before it yields anything from a page:
#: ``page_parsed(request, items: list[ProductPage])`` (the page's one item, none for an empty
#: page). Follow-up requests are yielded before it, so once it is stored they are queued too.
page_parsed = object()

#: Sent by the spider's errback for a page given up on: ``page_failed(request, reason: str)``.
page_failed = object()

#: Sent by the storage writer once every product of these pages is settled — durably written,
#: or kept in ``rejected_items`` (refused by normalisation or by the database, which is final):
#: ``items_stored(items: list[ProductPage])``. Pages whose products went to the spill file
#: instead (MongoDB unavailable) are not sent: they were not stored.
items_stored = object()

#: Sent once, the moment the crawl starts stopping — a finish reason given to
#: ``closing.close_spider``, or Scrapy's own stop (Ctrl-C): ``crawl_stopping(reason: str)``.
#: Nothing new may start after it (no paid call above all). Handlers must be synchronous.
crawl_stopping = object()

#: Sent on a forced stop (a second Ctrl-C: Scrapy stops the reactor without closing the
#: spider): ``forced_stop(reason: str)``. Write out everything held now — stored, or kept in
#: a file — bounded by ``TMAPI_FORCED_STOP_TIMEOUT``; the process exits right after.
forced_stop = object()

#: Sent after every ``forced_stop`` handler finished: ``crawl_killed(reason: str)``. Record how
#: the crawl ended (the run record), bounded by ``TMAPI_FORCED_STOP_TIMEOUT``.
crawl_killed = object()

#: Sent by a distributed worker's scheduler when the cluster crawl is complete (nothing queued,
#: nothing leased by any worker, every entry ever queued done or failed), before the worker
#: closes: ``crawl_complete(crawl_id: str, finaliser: bool)``. ``finaliser`` is true in exactly
#: one worker, the one that completed it in Redis: the place to finalise the whole crawl once.
crawl_complete = object()

#: Sent by a distributed worker each time it writes its progress snapshot to Redis (with its
#: acknowledgements and failures, and as it exits): ``worker_snapshot()``. Each handler returns
#: a dict of what it adds to the snapshot — the page accounting, the losses it noticed
#: (``losses``), which the finaliser reads to record the whole crawl's completeness.
worker_snapshot = object()

#: Sent by the run recorder once the crawl's end is in ``crawl_runs`` (its finish reason, and so
#: the exit status, final), before it closes its MongoDB connection:
#: ``crawl_recorded(crawl_id: str, final: bool)``. ``final``: this record speaks for the whole
#: crawl — a local crawl's run, or a cluster crawl's finaliser. Where alerts are checked.
crawl_recorded = object()

#: Sent by the spider in probe mode (``scrapy estimate --probe``) before it sends anything:
#: ``probe_planned(calls: int, held: int)``, the paid calls it is about to make (page 1 of each
#: planned query) and the page 1s the crawl it resumes holds already (not paid again).
probe_planned = object()

#: Sent by the spider for every decision of the frontier it applies (the plan's, a resume's
#: replay, a page's, a loss's, a dropped duplicate's, the one at close), before the pages it
#: asks for are queued: ``frontier_decided(decision: Decision)``. What the frontier learned is
#: counted, logged and marked for coverage there (``accounting.PageAccounting``).
frontier_decided = object()

#: Sent, and awaited, by the spider once an answered page is decided and its follow-ups are
#: queued, before ``page_parsed`` (and also when the shared state was lost, when
#: ``page_parsed`` is not sent): ``page_answered(request, summary: PageSummary, decision:
#: Decision, page: ProductPage)``. Where the page is counted, its cost, and its ledger document
#: (set on ``page`` to be written with its products; an empty page's written at once).
page_answered = object()

#: Sent, and awaited, by the spider's errback for a page given up on, before the frontier hears
#: of it: ``page_given_up(request, reason: str)``. Where its cost and its ledger document
#: (``lost``) are kept; ``page_failed`` follows once what the loss asks for is queued.
page_given_up = object()

#: Sent by the spider when it resumes an interrupted crawl, once the frontier was replayed over
#: the pages it holds and the replay's decisions were applied: ``crawl_resumed(crawl_id: str,
#: replay: Replay)`` (the pages held, the calls they saved, the pages left to fetch).
crawl_resumed = object()
