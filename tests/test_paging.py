"""Where a query's pages end, as one answer tells it (pure functions), and reading answers."""

from decimal import Decimal
from typing import Any

import pytest

from tmapi_crawler.frontier.paging import ends_at, last_page, page_url, short
from tmapi_crawler.frontier.summary import PageSummary, lenient_count, lenient_flag
from tmapi_crawler.plan import Query


def summary(items: int = 20, total: int | None = 100, more: bool | None = True) -> PageSummary:
    return PageSummary(items=items, total_count=total, has_next_page=more)


def test_the_total_implies_the_last_page() -> None:
    assert last_page(1, 1, summary(total=100), 20) == 5
    assert last_page(1, 1, summary(total=101), 20) == 6
    assert last_page(3, 5, summary(total=100), 20) == 5  # never less than known


def test_a_last_page_that_says_more_adds_one() -> None:
    assert last_page(5, 5, summary(total=100, more=True), 20) == 6
    assert last_page(4, 5, summary(total=100, more=True), 20) == 5


def test_without_total_a_full_page_or_has_next_says_more() -> None:
    assert last_page(2, 2, summary(total=None, more=True), 20) == 3
    assert last_page(2, 2, summary(total=None, more=None), 20) == 3
    assert last_page(2, 2, summary(items=19, total=None, more=None), 20) == 2


def test_an_absurd_total_is_only_a_number() -> None:
    assert last_page(1, 1, summary(total=10**12), 20) == 5 * 10**10
    assert last_page(1, 1, summary(total=2**63), 20) == 2**63 // 20 + 1


@pytest.mark.parametrize(("page", "items", "more", "end"), [
    (3, 0, False, 2),  # an empty page ends before itself
    (3, 0, True, 2),  # whatever it says
    (3, 20, False, 3),  # a page that says it is the last
    (3, 18, False, 3),
    (3, 18, True, None),  # a short page in the middle ends nothing
    (3, 20, True, None),
    (3, 20, None, None),
])
def test_which_answers_end_a_query(page: int, items: int, more: bool | None,
                                   end: int | None) -> None:
    assert ends_at(page, summary(items=items, more=more)) == end


def test_a_short_page_is_one_that_says_more() -> None:
    assert short(summary(items=18, more=True), 20)
    assert not short(summary(items=18, more=False), 20)
    assert not short(summary(items=20), 20)
    assert not short(summary(items=0), 20)


@pytest.mark.parametrize(("value", "count"), [
    (2465, 2465), ("2465", 2465), (" 12 ", 12), (1e12, 10**12), (2**63, 2**63), (3.0, 3),
    (-5, None), ("-5", None), ("many", None), ("1e12", None), (2.5, None), (True, None),
    (None, None), (float("inf"), None), (float("nan"), None), ("9" * 40, None), ([], None),
])
def test_counts_are_read_leniently(value: Any, count: int | None) -> None:
    assert lenient_count(value) == count


@pytest.mark.parametrize(("value", "flag"), [
    (True, True), (False, False), ("true", True), ("False", False), (1, True), (0, False),
    ("yes", None), (2, None), (None, None),
])
def test_flags_are_read_leniently(value: Any, flag: bool | None) -> None:
    assert lenient_flag(value) == flag


def test_a_summary_is_plain_data() -> None:
    page = PageSummary(items=3, ids=(11, 12), prices=(Decimal("0.6"), None, Decimal("8.0")),
                       total_count=2000, has_next_page=True, page_size=20)
    assert PageSummary.from_dict(page.to_dict()) == page


def test_page_url_is_stable_and_token_free() -> None:
    url = page_url("http://host:1/", Query(cat_id=9, sort="sales"), 2)
    assert url == ("http://host:1/1688/category/items/v2?cat_id=9&language=en&page=2"
                   "&page_size=20&sort=sales")
