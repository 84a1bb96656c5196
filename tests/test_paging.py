"""Which pages follow an answer (pure function)."""

import pytest

from tmapi_crawler.frontier.paging import page_url, pages_after
from tmapi_crawler.plan import Query


def after(page: int, known_last: int = 1, *, items: int = 20, total: int | None = 100,
          has_next: bool | None = True, max_pages: int | None = None,
          cap: int | None = None) -> list[int]:
    return list(pages_after(page, known_last, items=items, page_size=20, total_count=total,
                            has_next_page=has_next, max_pages=max_pages, result_cap=cap))


def test_page_one_fans_out_to_every_implied_page() -> None:
    assert after(1, total=100) == [2, 3, 4, 5]
    assert after(1, total=101) == [2, 3, 4, 5, 6]


def test_single_page_and_empty_answers_stop() -> None:
    assert after(1, total=20, has_next=False) == []
    assert after(1, items=0, total=0, has_next=False) == []
    assert after(3, 5, items=0, total=100) == []


def test_middle_pages_add_nothing_unless_the_total_grew() -> None:
    assert after(3, 5, total=100) == []
    assert after(3, 5, total=140) == [6, 7]


def test_last_page_with_more_says_continue() -> None:
    assert after(5, 5, total=100, has_next=True) == [6]
    assert after(5, 5, total=100, has_next=False) == []


def test_without_total_count_pages_go_one_by_one() -> None:
    assert after(1, total=None) == [2]
    assert after(2, 2, total=None) == [3]
    assert after(2, 2, total=None, has_next=None) == []


@pytest.mark.parametrize(("max_pages", "cap", "expected"), [
    (3, None, [2, 3]), (None, 60, [2, 3]), (10, 1000, [2, 3, 4, 5]),
])
def test_max_pages_and_result_cap_bound_the_fan_out(max_pages, cap, expected) -> None:
    assert after(1, total=100, max_pages=max_pages, cap=cap) == expected


def test_page_url_is_stable_and_token_free() -> None:
    url = page_url("http://host:1/", Query(cat_id=9, sort="sales"), 2)
    assert url == ("http://host:1/1688/category/items/v2?cat_id=9&language=en&page=2"
                   "&page_size=20&sort=sales")
