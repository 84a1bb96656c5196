"""Signals of the crawl, for components that need to know when a page's work is done.

A page is done when its follow-up requests are queued and every product it carried is
stored: a distributed queue acknowledges its lease only then, so a worker that dies before
that point loses nothing.
"""

#: Sent by the spider before it yields anything from a page:
#: ``page_parsed(request, items: list[ProductPage])`` (the page's one item, none for an empty
#: page). Follow-up requests are yielded before it, so once it is stored they are queued too.
page_parsed = object()

#: Sent by the spider's errback for a page given up on: ``page_failed(request, reason: str)``.
page_failed = object()

#: Sent by the storage pipeline after a batch is durably written (or refused by the database,
#: which is final): ``items_stored(items: list[ProductPage])``.
items_stored = object()

#: Sent by a distributed worker's scheduler when the cluster crawl is complete (nothing queued,
#: nothing leased by any worker, every entry ever queued done or failed), before the worker
#: closes: ``crawl_complete(crawl_id: str, finaliser: bool)``. ``finaliser`` is true in exactly
#: one worker, the one that completed it in Redis: the place to finalise the whole crawl once.
crawl_complete = object()
