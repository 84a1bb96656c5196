"""Where a crawl's time at the limit went, from the sandbox's records of its calls.

Every permit idle for a moment is a share of limit x busy time lost. Losses are told apart by
when they happen: before the calls in flight first reach the limit (start: page 1 alone, a
split's first page), after they last are at it (end: the last answers coming in with nothing
left to send), and between (middle: the hand-off from an answer to the next call, and pauses
of the crawler's loop). The hand-off is, for each answer, the time to the next call received.
"""

from __future__ import annotations

import statistics
from typing import Any


def timeline(records: list[dict[str, Any]], limit: int) -> dict[str, float]:
    """Shares of limit x busy time lost at the start, in the middle and at the end, and the
    median hand-off in milliseconds, of the calls that were answered after their latency."""
    calls = [(r["received_at"], r["answered_at"]) for r in records if "answered_at" in r]
    if not calls:
        return {}
    events = sorted([(t, 1) for t, _ in calls] + [(t, -1) for _, t in calls])
    first, last = events[0][0], events[-1][0]
    at_limit = [time for time, level in _levels(events) if level == limit]
    full_from, full_to = (at_limit[0], at_limit[-1]) if at_limit else (last, last)
    lost = {"start": 0.0, "middle": 0.0, "end": 0.0}
    previous, level = first, 0
    for time, change in events:
        if time > previous:
            phase = "start" if time <= full_from else "end" if previous >= full_to else "middle"
            lost[phase] += (limit - level) * (time - previous)
        previous, level = time, level + change
    capacity = limit * (last - first)
    starts = sorted(t for t, _ in calls)
    hand_offs, i = [], 0
    for answered in sorted(t for _, t in calls):
        while i < len(starts) and starts[i] < answered:
            i += 1
        if i < len(starts):
            hand_offs.append(starts[i] - answered)
            i += 1
    return {**{f"lost_{k}": v / capacity for k, v in lost.items()},
            "hand_off_ms": 1000 * statistics.median(hand_offs) if hand_offs else 0.0}


def _levels(events: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The calls in flight after each event."""
    level, levels = 0, []
    for time, change in events:
        level += change
        levels.append((time, level))
    return levels
