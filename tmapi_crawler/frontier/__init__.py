"""What to fetch next.

``frontier.Frontier`` decides, from a page's ``context.PageContext`` (the request meta) and
its ``summary.PageSummary`` (what the frontier reads of the answer), which pages follow and
what was learned; ``paging`` and ``splitting`` are its pure parts, ``state`` what it remembers
between answers.
"""
