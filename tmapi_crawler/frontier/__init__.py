"""What to fetch next.

``frontier.Frontier`` decides, from a page's ``context.PageContext`` (the request meta) and
its ``summary.PageSummary`` (what the frontier reads of the answer), which pages follow and
what was learned; ``paging`` and ``splitting`` are its pure parts, ``state`` what it remembers
between answers. ``replay`` begins a crawl (a resume's replay over the pages it holds),
``probe`` stands in for the frontier in probe mode.
"""
