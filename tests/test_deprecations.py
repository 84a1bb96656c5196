"""Class paths that moved (``deprecations.MOVED``): the old path still loads the class, with one
warning naming the new path; the current path is silent; a path that names nothing is refused
(exit 2) as before."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest
from scrapy.exceptions import ScrapyDeprecationWarning
from scrapy.settings import Settings

from tests.inprocess import crawler_for, engine_stopped, project_settings
from tmapi_crawler import deprecations
from tmapi_crawler.cli import check_project_settings
from tmapi_crawler.frontier.state import MemoryState
from tmapi_crawler.transport.budget import LocalBudget
from tmapi_crawler.transport.limiter import AdaptiveLimiter
from tmapi_crawler.transport.middleware import TmapiTransportMiddleware
from tmapi_crawler.validation import SettingError, check_settings

OLD_BUDGET = "tmapi_crawler.spend.budget.LocalBudget"
NEW_BUDGET = "tmapi_crawler.transport.budget.LocalBudget"
# Made-up old places for the two other settings' classes, so that every place that loads one
# is shown to read through the table whatever moves next.
OLD_LIMITER = "tmapi_crawler.old.limiter.AdaptiveLimiter"
OLD_STATE = "tmapi_crawler.old.state.MemoryState"


@pytest.fixture(autouse=True)
def moved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing warned about yet (the warning is once per process)."""
    monkeypatch.setattr(deprecations, "_warned", set())
    monkeypatch.setitem(deprecations.MOVED, OLD_LIMITER,
                        "tmapi_crawler.transport.limiter.AdaptiveLimiter")
    monkeypatch.setitem(deprecations.MOVED, OLD_STATE, "tmapi_crawler.frontier.state.MemoryState")


def test_the_old_budget_path_passes_the_check_with_one_warning_naming_the_new_one() -> None:
    with pytest.warns(ScrapyDeprecationWarning) as caught:
        check_settings(Settings({"TMAPI_BUDGET": OLD_BUDGET}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScrapyDeprecationWarning)
        check_settings(Settings({"TMAPI_BUDGET": OLD_BUDGET}))  # once: no second warning
    assert len(caught) == 1
    assert OLD_BUDGET in str(caught[0].message)
    assert f"set {NEW_BUDGET} instead" in str(caught[0].message)


def test_the_transport_and_the_spider_build_the_moved_classes_from_their_old_paths() -> None:
    async def main() -> tuple[object, object, object]:
        crawler = crawler_for(project_settings(
            TMAPI_BUDGET=OLD_BUDGET, TMAPI_MAX_REQUESTS=3, TMAPI_LIMITER=OLD_LIMITER,
            TMAPI_FRONTIER_STATE=OLD_STATE), cat_id="101")
        try:
            transport = crawler.get_downloader_middleware(TmapiTransportMiddleware)
            assert transport is not None
            return (transport.budget, transport.limiter,
                    crawler.spider.build_frontier().state)
        finally:
            await engine_stopped(crawler)

    with pytest.warns(ScrapyDeprecationWarning) as caught:
        budget, limiter, state = asyncio.run(main())
    assert isinstance(budget, LocalBudget)
    assert budget.maximum == 3
    assert isinstance(limiter, AdaptiveLimiter)
    assert isinstance(state, MemoryState)
    warned = sorted(str(w.message).split(" has moved")[0] for w in caught
                    if issubclass(w.category, ScrapyDeprecationWarning))
    assert warned == sorted([OLD_BUDGET, OLD_LIMITER, OLD_STATE])


def test_the_current_paths_draw_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScrapyDeprecationWarning)
        check_settings(Settings({
            "TMAPI_BUDGET": NEW_BUDGET,
            "TMAPI_LIMITER": "tmapi_crawler.transport.limiter.AdaptiveLimiter",
            "TMAPI_FRONTIER_STATE": "tmapi_crawler.frontier.state.MemoryState"}))
        assert deprecations.current_path(NEW_BUDGET) == NEW_BUDGET
    assert not deprecations._warned


@pytest.mark.parametrize("path", [
    "tmapi_crawler.spend.budget.NoSuchBudget", "tmapi_crawler.spend.budget", "nonsense"])
def test_a_path_that_names_nothing_is_still_refused(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SettingError, match="expected the import path of a class"):
        check_settings(Settings({"TMAPI_BUDGET": path}))
    settings = Settings({"TMAPI_BUDGET": path})
    settings.set("TMAPI_BUDGET", path, priority="cmdline")
    with pytest.raises(SystemExit) as ended:
        check_project_settings(settings)
    assert ended.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: TMAPI_BUDGET={path!r} (given with -s)")


def test_every_moved_path_is_documented() -> None:
    page = (Path(__file__).parent.parent / "docs/reference/settings.md").read_text()
    for old, new in deprecations.MOVED.items():
        if old not in (OLD_LIMITER, OLD_STATE):
            assert f"| `{old}` | `{new}` |" in page
