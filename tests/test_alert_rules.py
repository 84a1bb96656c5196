"""The alerts file and the rules' choices, as units: parsing and refusing (with the line), which
changes each rule fires on, the message a rule sends, a crawl's gaps from its record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scrapy.settings import Settings

from tests.crawling import PROJECT_ROOT
from tmapi_crawler.alerts.evaluate import (
    MAX_LINES,
    Change,
    CrawlChanges,
    gaps,
    line,
    message,
    select,
)
from tmapi_crawler.alerts.rules import (
    Rule,
    RulesError,
    destination_key,
    load,
    parse,
    service_of,
)
from tmapi_crawler.cli import USAGE_ERROR, check_alerts_file
from tmapi_crawler.validation import SettingError

GOOD = """\
notify: ["json://127.0.0.1:8765/hook", "tgram://123456:secretbot/987"]
rules:
  - {kind: price_drop, min_pct: 10, cat_id: [1031922]}
  - {kind: price_rise, min_pct: 5}
  - {kind: below, price: 9.9, item_id: [626573470131]}
  - {kind: new, cat_id: 1031922}
  - {kind: vanished}
  - {kind: incomplete}
"""


def test_the_issue_example_parses_into_its_rules() -> None:
    config = parse(GOOD)
    assert config.notify == ("json://127.0.0.1:8765/hook", "tgram://123456:secretbot/987")
    assert [(r.kind, r.min_pct, r.price, set(r.cat_id), set(r.item_id), r.line)
            for r in config.rules] == [
        ("price_drop", 10.0, None, {1031922}, set(), 3),
        ("price_rise", 5.0, None, set(), set(), 4),
        ("below", None, 9.9, set(), {626573470131}, 5),
        ("new", None, None, {1031922}, set(), 6),
        ("vanished", None, None, set(), set(), 7),
        ("incomplete", None, None, set(), set(), 8),
    ]
    assert len({r.key for r in config.rules}) == 6


@pytest.mark.parametrize(("text", "refusal"), [
    ("notify: [json://h/x\nrules: []\n", r"^alerts\.yaml:2: "),
    ("rules:\n  - {kind: new}\n", r"^alerts\.yaml:1: notify must be a non-empty list"),
    ("notify: [json://h/x]\nrules:\n  - {kind: new}\n  - {kind: cheaper, min_pct: 3}\n",
     r"^alerts\.yaml:4: kind must be one of price_drop, .*not 'cheaper'"),
    ("notify: [json://h/x]\nrules:\n  - {kind: price_drop}\n",
     r"^alerts\.yaml:3: price_drop needs min_pct"),
    ("notify: [json://h/x]\nrules:\n  - {kind: price_drop, min_pct: 100}\n",
     r"^alerts\.yaml:3: price_drop needs min_pct, a number from 0 to under 100"),
    ("notify: [json://h/x]\nrules:\n\n  - {kind: below, price: cheap}\n",
     r"^alerts\.yaml:4: below needs price"),
    ("notify: [json://h/x]\nrules:\n  - {kind: new, min_pct: 5}\n",
     r"^alerts\.yaml:3: new takes cat_id, item_id; not 'min_pct'"),
    ("notify: [json://h/x]\nrules:\n  - {kind: incomplete, item_id: [1]}\n",
     r"^alerts\.yaml:3: incomplete takes cat_id; not 'item_id'"),
    ("notify: [json://h/x]\nrules:\n  - {kind: vanished, cat_id: [abc]}\n",
     r"^alerts\.yaml:3: cat_id must be a positive whole number"),
    ("notify: [json://h/x]\nrules:\n  - {kind: new}\n  - kind: new\n",
     r"^alerts\.yaml:4: the same rule as line 3"),
    ("notify: [json://h/x]\nrule:\n  - {kind: new}\n", r"^alerts\.yaml:1: unknown key 'rule'"),
    ("notify:\n  - json://h/x\n  - nosuchservice://top-secret-key@h\nrules: [{kind: new}]\n",
     r"^alerts\.yaml:3: Apprise does not accept this nosuchservice:// URL"),
])
def test_a_malformed_file_is_refused_in_one_line_naming_the_line(text: str,
                                                                 refusal: str) -> None:
    with pytest.raises(RulesError, match=refusal) as refused:
        parse(text, "alerts.yaml")
    assert "\n" not in str(refused.value)
    assert "top-secret-key" not in str(refused.value)


def test_the_settings_check_refuses_the_file_and_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "alerts.yaml"
    bad.write_text("notify: [json://h/x]\nrules:\n  - {kind: below}\n")
    with pytest.raises(SettingError, match=r"^TMAPI_ALERTS_FILE: .*alerts\.yaml:3: below needs"):
        check_alerts_file(Settings({"TMAPI_ALERTS_FILE": str(bad)}))
    with pytest.raises(SettingError, match="cannot be read"):
        check_alerts_file(Settings({"TMAPI_ALERTS_FILE": str(tmp_path / "missing.yaml")}))
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    check_alerts_file(Settings({"TMAPI_ALERTS_FILE": str(good)}))


def test_a_crawl_with_a_malformed_alerts_file_exits_2_before_anything(tmp_path: Path) -> None:
    bad = tmp_path / "alerts.yaml"
    bad.write_text("notify: [json://h/x]\nrules:\n  - {kind: new}\n  - {kind: drop}\n")
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "category_items", "-a", "cat_id=1031922",
         "-s", f"TMAPI_ALERTS_FILE={bad}", "-s", f"MONGO_EMBEDDED_DIR={tmp_path / 'db'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "TMAPI_TOKEN": "t", "TMAPI_BASE_URL": "http://127.0.0.1:9"})
    assert done.returncode == USAGE_ERROR
    assert done.stderr.strip().splitlines() == [
        f"error: TMAPI_ALERTS_FILE: {bad}:4: kind must be one of price_drop, price_rise, "
        "below, new, vanished, incomplete, not 'drop'"]
    assert not (tmp_path / "db").exists(), "no database started"


def test_a_url_is_named_by_its_service_and_keyed_one_way() -> None:
    assert service_of("tgram://123456:secretbot/987") == "tgram"
    assert service_of("JSON://127.0.0.1:8765/hook") == "json"
    assert service_of("no url at all") == "unknown"
    key = destination_key("tgram://123456:secretbot/987")
    assert len(key) == 16
    assert "secret" not in key
    assert key != destination_key("tgram://123456:secretbot/988")


# Which changes a rule fires on.

MOVES = CrawlChanges(
    "c2",
    prices=[
        Change("1:c2", 1, 100.0, 90.0, (7,)),     # -10 %
        Change("2:c2", 2, 100.0, 91.0, (7,)),     # -9 %
        Change("3:c2", 3, 10.0, 12.0, (8,)),      # +20 %
        Change("4:c2", 4, None, 5.0, (8,)),       # a price where there was none
        Change("5:c2", 5, 9.0, 8.0, (7,)),        # -11 %, under the target, already below
        Change("6:c2", 6, 20.0, 9.9, (7, 8)),     # crosses to exactly the target
        Change("7:c2", 7, 10.0, 10.5, (7,)),      # +5 %
        Change("8:c2", 8, 10.0, None, (7,)),      # price gone: no percentage
    ],
    new=[Change("9:c2", 9, None, 3.0, (7,)), Change("10:c2", 10, None, 50.0, (8,))],
    vanished=[Change("11:c2", 11, categories=(7,), note="gone from 7")],
)


def fired(rule: Rule) -> list[int | None]:
    return [change.item_id for change in select(rule, MOVES)]


def test_price_drop_and_rise_take_at_least_their_percentage_biggest_first() -> None:
    assert fired(Rule("price_drop", min_pct=10)) == [6, 5, 1]
    assert fired(Rule("price_drop", min_pct=9)) == [6, 5, 1, 2]
    assert fired(Rule("price_drop", min_pct=10, cat_id=frozenset({8}))) == [6]
    assert fired(Rule("price_rise", min_pct=5)) == [3, 7]
    assert fired(Rule("price_rise", min_pct=5, item_id=frozenset({7, 4}))) == [7]
    assert fired(Rule("price_rise", min_pct=0)) == [3, 7]


def test_below_fires_on_crossing_to_the_target_from_above_or_unknown() -> None:
    assert fired(Rule("below", price=9.9)) == [9, 4, 6]
    assert fired(Rule("below", price=8.5)) == [9, 4, 5]
    assert fired(Rule("below", price=100)) == [9, 4, 10], "the others were below already"


def test_new_and_vanished_follow_their_filters() -> None:
    assert fired(Rule("new")) == [9, 10]
    assert fired(Rule("new", cat_id=frozenset({8}))) == [10]
    assert fired(Rule("vanished")) == [11]
    assert fired(Rule("vanished", cat_id=frozenset({8}))) == []


def test_incomplete_reads_the_completeness_record_and_the_finish_reason() -> None:
    run = {"finish_reason": "tmapi_budget_exhausted", "complete": False, "incomplete": {
        "301": {"reasons": ["pages_failed", "result_cap"], "stored": 80, "claimed": 120,
                "unreached": 40, "queries": ["q1"]},
        "303": {"reasons": ["budget"], "stored": 0, "claimed": None, "unreached": 0}}}
    found = gaps(run, "c9")
    assert [(g.key, g.categories, g.note) for g in found] == [
        ("c9:stopped:tmapi_budget_exhausted", (), "stopped: tmapi_budget_exhausted"),
        ("c9:category:301", (301,),
         "category 301: pages_failed, result_cap; 80 of 120 products stored; 40 unreached"),
        ("c9:category:303", (303,), "category 303: budget"),
    ]
    changes = CrawlChanges("c9", gaps=found)
    assert [g.key for g in select(Rule("incomplete", cat_id=frozenset({303})), changes)] == [
        "c9:stopped:tmapi_budget_exhausted", "c9:category:303"]
    assert gaps({"finish_reason": "finished", "complete": True}, "c9") == []
    assert [g.key for g in gaps({"finish_reason": "finished", "complete": False}, "c9")] == [
        "c9:incomplete"]
    assert gaps({"finish_reason": "finished"}, "c9") == [], "no record of completeness yet"


# The message.


def test_a_line_gives_id_title_old_new_percent_and_link() -> None:
    change = Change("1:c", 626573470131, 12.5, 9.9, (7,), "Ceramic mug", "https://x/1")
    assert line(change) == "626573470131 · Ceramic mug · 12.50 → 9.90 (-20.8%) · https://x/1"
    assert line(Change("9:c", 9, None, 3.0)) == "9 · new at 3.00"
    assert line(Change("c:stopped", note="stopped: shutdown")) == "stopped: shutdown"
    long_title = line(Change("2:c", 2, 1.0, 2.0, title="x" * 200))
    assert "x" * 59 + "…" in long_title
    assert "x" * 60 not in long_title


def test_a_long_message_is_cut_with_the_count_of_the_rest() -> None:
    changes = [Change(f"{i}:c", i, 10.0, 5.0, title=f"product {i}") for i in range(1, 54)]
    title, body = message(Rule("price_drop", min_pct=10), "c", changes)
    assert title == "tmapi: price dropped by 10% or more: 53 products"
    lines = body.splitlines()
    assert len(lines) == MAX_LINES + 2
    assert lines[-2:] == [f"… and {53 - MAX_LINES} more", "crawl c"]
    assert lines[0].startswith("1 · product 1 · 10.00 → 5.00 (-50.0%)")
    huge = [Change(f"{i}:c", i, 10.0, 5.0, link="https://x/" + "y" * 400) for i in range(10)]
    _, body = message(Rule("price_drop", min_pct=10), "c", huge)
    assert len(body) < 3500
    assert body.splitlines()[-2].startswith("… and ")


def test_the_example_file_is_valid() -> None:
    config = load(str(PROJECT_ROOT / "examples" / "alerts.yaml"))
    assert [rule.kind for rule in config.rules] == [
        "price_drop", "price_rise", "below", "new", "vanished", "incomplete"]
    assert [service_of(url) for url in config.notify] == ["tgram", "json"]
