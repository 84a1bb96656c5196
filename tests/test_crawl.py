"""Whole crawls against the sandbox over HTTP: arguments, paging, API errors.

Each answer path of the transport has its own in-process test (``test_transport.py``); here
only the user's view of them: what a crawl stores, logs and exits with. Crawls run in-process
(``tests/inprocess.py``); a real ``scrapy crawl`` only where the command's part is checked —
exit status, its check before start, the token absent from a real process's output.

MongoDB is left out here (items come through the feed export); storage has its own tests.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from math import ceil
from pathlib import Path

import pytest
from scrapy.settings import Settings

from tests.crawling import TOKEN, crawl, records
from tests.inprocess import crawl_in_process, project_settings
from tmapi_crawler.commands.crawl import check_before_start
from tmapi_crawler.sandbox.process import SandboxProcess

SIZES = {"101": 95, "102": 40, "103": 0}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES, latency=0.005) as server:
        yield server


@pytest.fixture
def fresh(sandbox: SandboxProcess) -> SandboxProcess:
    sandbox.reset()
    sandbox.configure(fault_rates={}, quota=0, garbage_rate=0.0, missing_data_rate=0.0,
                      concurrency_limit=0, latency=0.005)
    return sandbox


def item_ids(result, **context) -> set[int]:
    return {
        i["item_id"] for i in result.items
        if all(i["context"][k] == v for k, v in context.items())
    }


@pytest.mark.parametrize(("arguments", "message"), [
    ([], "error: cat_id: missing"),
    (["cat_id=12a"], "error: cat_id: '12a' is not an integer"),
    (["cat_id=1", "language=fr"], "error: language: 'fr' is not one of"),
    (["cat_id=1", "sort=cheapest"], "error: sort: 'cheapest' is not one of"),
    (["cat_id=1", "page_size=0"], "error: page_size: '0' is not a positive integer"),
    (["cat_id=1", "max_pages=two"], "error: max_pages: 'two' is not a positive integer"),
    (["cat_id=1", "price_start=low"], "error: price_start: 'low' is not a non-negative number"),
    (["cat_id=1", "price_start=9", "price_end=2"], "error: price_start: 9 is greater than"),
    (["cat_id=1", "new_arrival=maybe"], "error: new_arrival: 'maybe' is not a boolean"),
    (["cat_id=1", "support_dropshipping=1"], "error: support_dropshipping: '1' is not a boolean"),
    (["cat_id=1", "free_shipping=yes"], "error: free_shipping: 'yes' is not a boolean"),
    (["cat_id=1", "is_super_factory=no"], "error: is_super_factory: 'no' is not a boolean"),
    (["plan=/nonexistent/plan.yaml"], "error: plan: cannot read"),
    (["cat_id=1", "color=red"], "error: color: unknown argument"),
])
def test_bad_arguments_are_refused_before_any_request(
    fresh: SandboxProcess, arguments: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The check ``scrapy crawl`` makes before it starts, in-process; a refused plan file and a
    missing token (below) go through a real ``scrapy crawl``: exit 2, one line on stderr."""
    settings = Settings(project_settings(TMAPI_BASE_URL=fresh.url, MONGO_URI="mongodb://unused"))
    with pytest.raises(SystemExit) as exited:
        check_before_start(settings, "category_items",
                           dict(argument.split("=", 1) for argument in arguments))
    assert exited.value.code == 2
    log = capsys.readouterr().err
    assert log.strip().splitlines() == [log.strip()]
    assert log.startswith(message)
    assert fresh.stats()["requests"] == 0


def test_an_invalid_plan_file_is_refused(fresh: SandboxProcess, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("queries:\n  - cat_id: 101\n  - cat_id: 102\n    sort: cheapest\n")
    result = crawl(tmp_path, f"plan={plan}", base_url=fresh.url, store=False)
    assert result.returncode == 2
    assert result.log.startswith("error: plan: queries[1] (line 3): sort: 'cheapest' is not one")
    assert fresh.stats()["requests"] == 0


def test_a_missing_token_is_refused_before_any_request(
    fresh: SandboxProcess, tmp_path: Path
) -> None:
    result = crawl(tmp_path, "cat_id=101", base_url=fresh.url, store=False,
                   env={"TMAPI_TOKEN": ""})
    assert result.returncode == 2
    assert result.log.startswith("error: TMAPI_TOKEN: no API token configured")
    assert fresh.stats()["requests"] == 0


def test_every_page_of_every_combination_exactly_once(
    fresh: SandboxProcess, tmp_path: Path
) -> None:
    result = crawl_in_process(tmp_path, "cat_id=101,102,103", "language=en,ru",
                              base_url=fresh.url, feed=True)
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("finish_reason") == "finished"
    served = records(fresh.stats(), billed=None)
    assert len(served) == len(set(served)), "a (query, page) was requested twice"
    for cat_id, size in SIZES.items():
        truth = set(fresh.truth(cat_id=cat_id)["item_ids"])
        assert len(truth) == size
        for language in ("en", "ru"):
            assert item_ids(result, cat_id=int(cat_id), language=language) == truth
            pages = sorted(p for c, lang, _, p in served if c == int(cat_id) and lang == language)
            assert pages == list(range(1, max(1, ceil(size / 20)) + 1))
    assert result.stat("tmapi/items") == 2 * sum(SIZES.values())
    assert result.stat("tmapi/pages/empty") == 2  # category 103, both languages


def test_items_keep_their_query_context(fresh: SandboxProcess, tmp_path: Path) -> None:
    result = crawl_in_process(tmp_path, "cat_id=102", "sort=price_up", "free_shipping=true",
                              "price_start=0.5", "page_size=7", base_url=fresh.url, feed=True)
    assert result.returncode == 0, result.log[-3000:]
    truth = fresh.truth(cat_id=102, sort="price_up", free_shipping=True, price_start="0.5")
    by_rank = sorted(result.items, key=lambda i: (i["context"]["page"], i["context"]["position"]))
    assert [i["item_id"] for i in by_rank] == truth["item_ids"]
    for item in result.items:
        context = item["context"]
        assert context["filters"] == {"price_start": "0.5", "free_shipping": True}
        assert (context["cat_id"], context["language"], context["sort"]) == (102, "en", "price_up")
        assert context["page"] >= 1
        assert 0 <= context["position"] < 7
    positions = Counter((i["context"]["page"], i["context"]["position"]) for i in result.items)
    assert max(positions.values()) == 1


def test_max_pages_bounds_each_query(fresh: SandboxProcess, tmp_path: Path) -> None:
    result = crawl_in_process(tmp_path, "cat_id=101,102", "max_pages=2", base_url=fresh.url,
                              feed=True)
    assert result.returncode == 0, result.log[-3000:]
    assert sorted(p for *_, p in records(fresh.stats())) == [1, 1, 2, 2]
    assert len(result.items) == 40 + 40


def test_a_plan_file_drives_the_crawl(fresh: SandboxProcess, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "defaults": {"language": ["en", "ja"]},
        "queries": [{"cat_id": 101, "sort": "sales"}, {"cat_id": 102, "language": "ko"}],
    }))
    result = crawl_in_process(tmp_path, f"plan={plan}", base_url=fresh.url, feed=True)
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("tmapi/queries") == 3
    seen = {(c, lang, s) for c, lang, s, _ in records(fresh.stats())}
    assert seen == {(101, "en", "sales"), (101, "ja", "sales"), (102, "ko", "default")}


def test_twenty_percent_faults_lose_no_item(fresh: SandboxProcess, tmp_path: Path) -> None:
    fresh.configure(fault_rates={417: 0.05, 499: 0.05, 500: 0.04, 503: 0.03},
                    garbage_rate=0.015, missing_data_rate=0.015, fault_mode="mixed")
    result = crawl_in_process(tmp_path, "cat_id=101,102", "language=en,ru,zh", "page_size=5",
                              base_url=fresh.url, feed=True)
    assert result.returncode == 0, result.log[-3000:]
    for cat_id in (101, 102):
        truth = set(fresh.truth(cat_id=cat_id)["item_ids"])
        for language in ("en", "ru", "zh"):
            assert item_ids(result, cat_id=cat_id, language=language) == truth
    stats = fresh.stats()
    faults = stats["requests"] - stats["answers"]["200"] + stats["garbage"] + stats["missing_data"]
    assert faults >= 0.1 * stats["requests"]
    retried = result.stats_with("tmapi/retry/reason_count/")
    assert set(retried) >= {"417", "499"}
    assert result.stat("tmapi/pages/failed") == 0
    assert result.stat("tmapi/retry/count") == sum(retried.values())


def test_422_is_logged_counted_and_the_rest_goes_on(fresh: SandboxProcess, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("queries:\n  - {cat_id: 101, page_size: 500}\n  - {cat_id: 102}\n")
    result = crawl_in_process(tmp_path, f"plan={plan}", base_url=fresh.url, feed=True)
    assert result.stat("finish_reason") == "finished"
    assert result.stat("tmapi/answers/422") == 1
    assert result.stat("tmapi/pages/failed") == 1
    assert "tmapi/retry/count" not in result.stats
    errors = [line for line in result.log.splitlines() if "ERROR" in line and "422" in line]
    assert len(errors) == 1
    assert "cat_id=101" in errors[0]
    assert "page_size=500" in errors[0]
    assert item_ids(result, cat_id=102) == set(fresh.truth(cat_id=102)["item_ids"])


def test_439_stops_promptly_without_a_retry_storm(fresh: SandboxProcess, tmp_path: Path) -> None:
    fresh.configure(quota=3, latency=0.05)
    result = crawl(tmp_path, "cat_id=101,102,103", "language=en,ru,zh,ja", base_url=fresh.url,
                   store=False, settings={"TMAPI_CONCURRENCY": 3})
    assert result.returncode == 1
    assert result.stat("finish_reason") == "tmapi_quota_exhausted"
    answers = fresh.stats()["answers"]
    assert answers.get("200") == 3
    assert 1 <= answers.get("439", 0) <= 3, answers
    assert "tmapi/retry/count" not in result.stats


def test_a_rejected_token_stops_the_crawl(fresh: SandboxProcess, tmp_path: Path) -> None:
    result = crawl(tmp_path, "cat_id=101,102,103", "language=en,ru", base_url=fresh.url,
                   store=False, env={"TMAPI_TOKEN": "not-the-sandbox-token"},
                   settings={"TMAPI_CONCURRENCY": 2})
    assert result.returncode == 1
    assert result.stat("finish_reason") == "tmapi_unauthorized"
    assert 1 <= fresh.stats()["answers"].get("401", 0) <= 2
    assert "not-the-sandbox-token" not in result.log


def test_concurrency_never_exceeds_the_setting(fresh: SandboxProcess, tmp_path: Path) -> None:
    fresh.configure(latency=0.03)
    result = crawl_in_process(tmp_path, "cat_id=101,102", "language=en,ru,zh",
                              base_url=fresh.url, settings={"TMAPI_CONCURRENCY": 3})
    assert result.returncode == 0, result.log[-3000:]
    assert fresh.stats()["peak_in_flight"] == 3
    assert result.stat("tmapi/throttle/peak_in_flight") == 3


def test_the_token_appears_nowhere(fresh: SandboxProcess, tmp_path: Path) -> None:
    fresh.configure(fault_rates={417: 0.1, 503: 0.1}, garbage_rate=0.05)
    result = crawl(tmp_path, "cat_id=101,102", base_url=fresh.url, store=False, feed=True,
                   settings={"LOG_LEVEL": "DEBUG"})
    assert result.returncode == 0
    assert "Retrying" in result.log
    assert "Crawled (200)" in result.log
    assert TOKEN not in result.log
    assert TOKEN not in json.dumps(result.stats)
    assert TOKEN not in json.dumps(result.items)
    assert "apiToken" not in result.log
