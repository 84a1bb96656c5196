"""A stats collector that also writes the final stats as JSON, for scripts and CI to read.

Scrapy's collectors persist the stats in ``_persist_stats`` once the spider closed, after
``finish_reason`` is set — also when the crawl ended before it started (e.g. storage down),
which no engine signal covers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scrapy.statscollectors import MemoryStatsCollector


class StatsFileCollector(MemoryStatsCollector):
    """``STATS_FILE`` set: the final stats go there as JSON; empty: nothing is written."""

    def _persist_stats(self, stats: dict[str, Any]) -> None:
        super()._persist_stats(stats)
        path = self._crawler.settings.get("STATS_FILE")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(stats, default=str, indent=1, sort_keys=True))
