"""Argument validation and fan-out (pure functions)."""

import json

import pytest

from tmapi_crawler import api
from tmapi_crawler.plan import PlanError, Query, plan_from_arguments


def test_comma_lists_fan_out_into_every_combination() -> None:
    plan = plan_from_arguments({
        "cat_id": "1,2", "language": "en,ru", "sort": "sales", "free_shipping": "true,false",
    })
    assert len(plan.queries) == 2 * 2 * 1 * 2
    assert {(q.cat_id, q.language, q.free_shipping) for q in plan.queries} == {
        (c, lang, f) for c in (1, 2) for lang in ("en", "ru") for f in (True, False)
    }
    assert all(q.sort == "sales" for q in plan.queries)


def test_duplicates_collapse_and_defaults_apply() -> None:
    plan = plan_from_arguments({"cat_id": "7,7, 7"})
    assert plan.queries == (Query(cat_id=7),)
    assert plan.queries[0].language == api.DEFAULT_LANGUAGE
    assert plan.max_pages is None


def test_params_are_in_fixed_order_and_token_free() -> None:
    query = Query(cat_id=5, price_start="1.5", free_shipping=True)
    names = [name for name, _ in query.params(3)]
    assert names == ["cat_id", "language", "page", "page_size", "sort", "price_start",
                     "free_shipping"]
    assert api.TOKEN_PARAM not in names
    assert dict(query.params(3))["free_shipping"] == "true"


@pytest.mark.parametrize(("arguments", "message"), [
    ({}, "cat_id: missing"),
    ({"cat_id": "abc"}, "cat_id: 'abc' is not an integer"),
    ({"cat_id": "1,-2"}, "cat_id: '-2' is not an integer"),
    ({"cat_id": "1", "language": "fr"}, "language: 'fr' is not one of en, zh"),
    ({"cat_id": "1", "sort": "cheap"}, "sort: 'cheap' is not one of default, sales"),
    ({"cat_id": "1", "page_size": "0"}, "page_size: '0' is not a positive integer"),
    ({"cat_id": "1", "page_size": "x"}, "page_size: 'x' is not a positive integer"),
    ({"cat_id": "1", "max_pages": "-1"}, "max_pages: '-1' is not a positive integer"),
    ({"cat_id": "1", "price_start": "cheap"}, "price_start: 'cheap' is not a non-negative"),
    ({"cat_id": "1", "price_end": "nan"}, "price_end: 'nan' is not a non-negative"),
    ({"cat_id": "1", "price_start": "9", "price_end": "3"}, "price_start: 9 is greater than"),
    ({"cat_id": "1", "price_start": "9.999"}, "price_start: '9.999' has more than two decimals"),
    ({"cat_id": "1", "price_end": "0.001"}, "price_end: '0.001' has more than two decimals"),
    ({"cat_id": "1", "new_arrival": "yes"}, "new_arrival: 'yes' is not a boolean"),
    ({"cat_id": "1", "catid": "1"}, "catid: unknown argument"),
    ({"plan": "/nonexistent/plan.yaml"}, "plan: cannot read"),
])
def test_bad_arguments_are_refused_with_one_line(arguments: dict, message: str) -> None:
    with pytest.raises(PlanError) as refused:
        plan_from_arguments(arguments)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_plan_file_defaults_entries_and_cli_overrides(tmp_path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "max_pages: 4\n"
        "defaults: {language: [en, ru], sort: sales}\n"
        "queries:\n"
        "  - cat_id: [10, 11]\n"
        "  - {cat_id: 12, sort: price_up, free_shipping: true}\n"
    )
    plan = plan_from_arguments({"plan": str(path), "page_size": "40"})
    assert plan.max_pages == 4
    assert len(plan.queries) == 2 * 2 + 2
    assert {q.page_size for q in plan.queries} == {40}
    assert Query(cat_id=12, language="ru", sort="price_up", page_size=40,
                 free_shipping=True) in plan.queries


def test_json_plan_and_its_errors_name_the_entry(tmp_path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"queries": [{"cat_id": 1}, {"cat_id": 2, "sort": "x"}]}))
    with pytest.raises(PlanError, match=r"plan: queries\[1\] \(line 1\): sort: 'x' is not one"):
        plan_from_arguments({"plan": str(path)})


@pytest.mark.parametrize(
    "text", ["queries: [", "- just a list", "queries: 3", "foo: 1\nqueries: []"]
)
def test_invalid_plan_files_are_refused(tmp_path, text: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(PlanError, match="plan: "):
        plan_from_arguments({"plan": str(path)})


def test_the_shipped_example_plan_is_valid() -> None:
    plan = plan_from_arguments({"plan": "examples/plan.yaml"})
    assert plan.queries


def test_prices_in_whole_fen_are_accepted_and_trailing_zeros_dropped() -> None:
    plan = plan_from_arguments({"cat_id": "1", "price_start": "9.90", "price_end": "10.000"})
    assert (plan.queries[0].price_start, plan.queries[0].price_end) == ("9.9", "10")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("plan.yaml", "queries:\n  - cat_id: 1\n  - {cat_id: 2\n", "line 4, column 1: not valid YAML"),
    ("plan.yaml", "queries:\n  - cat_id: 1\n bad: [\n", "line 3, column 2: not valid YAML"),
    ("plan.json", '{"queries": [\n  {"cat_id": 1},\n]}', "line 3, column 1: not valid JSON"),
])
def test_syntax_errors_in_plan_files_name_the_line(
    tmp_path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PlanError) as refused:
        plan_from_arguments({"plan": str(path)})
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_bad_entry_names_its_line(tmp_path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "defaults: {language: en}\n"
        "queries:\n"
        "  - cat_id: 1\n"
        "\n"
        "  - cat_id: 2\n"
        "    sort: cheapest\n"
    )
    with pytest.raises(PlanError, match=r"^plan: queries\[1\] \(line 5\): sort: 'cheapest' "):
        plan_from_arguments({"plan": str(path)})


def test_cat_id_next_to_a_plan_is_refused_not_ignored(tmp_path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("queries:\n  - cat_id: 1\n")
    with pytest.raises(PlanError, match="cat_id: not allowed next to plan"):
        plan_from_arguments({"plan": str(path), "cat_id": "2"})
    assert plan_from_arguments({"plan": str(path), "language": "zh"}).queries == (
        Query(cat_id=1, language="zh"),)
