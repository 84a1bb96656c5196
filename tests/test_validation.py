"""Settings are checked like arguments: one line naming the setting, exit 2, nothing sent.

The registry test reads the settings modules' source, so a setting added on another branch
without a rule or a row in the reference fails here.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings
from scrapy.utils.project import get_project_settings

from tests.crawling import PROJECT_ROOT, TOKEN, crawl
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.validation import (
    SETTINGS,
    SettingError,
    check_names,
    check_settings,
    library_settings,
    unknown_settings,
)

SETTINGS_SOURCES = [PROJECT_ROOT / "tmapi_crawler" / "settings.py",
                    *sorted((PROJECT_ROOT / "settings_profiles").glob("*.py"))]
REFERENCE = PROJECT_ROOT / "docs" / "reference" / "settings.md"
OWN = re.compile(r"(TMAPI|MONGO|REDIS)_[A-Z0-9_]+")


def assigned_names(path: Path) -> set[str]:
    """Upper-case names a settings module assigns at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        names.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper())
    return names


def documented_names() -> set[str]:
    """Setting names in the first column of the reference's tables."""
    names = set()
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split(" | ")[0]))
    return names


def test_every_setting_of_the_project_is_registered_and_documented() -> None:
    own = {name for path in SETTINGS_SOURCES for name in assigned_names(path)
           if OWN.fullmatch(name)}
    assert {"TMAPI_CONCURRENCY", "MONGO_URI", "REDIS_URL"} <= own, "the scan found them"
    assert sorted(own - set(SETTINGS)) == [], "add a rule to tmapi_crawler/validation.py"
    assert sorted(set(SETTINGS) - documented_names()) == [], \
        "add a row to docs/reference/settings.md"


def profile_table() -> list[list[str]]:
    """The rows of the reference's profiles table: names, then the value in each profile."""
    section = REFERENCE.read_text().split("## Profiles", 1)[1]
    return [[cell.strip() for cell in line.strip("|").split(" | ")]
            for line in section.splitlines() if line.startswith("| `")]


def table_values(cell: str) -> list[Any]:
    """A cell's values, one per setting of its row: dotted paths, booleans, numbers."""
    values: list[Any] = []
    for part in re.sub(r" \(.*?\)", "", cell).split(", "):
        text = part.strip().strip("`").removesuffix(" s")
        values.append({"true": True, "false": False}.get(text, text))
    return values


@pytest.mark.parametrize("column", [2, 3], ids=["distributed", "production"])
def test_the_profiles_table_says_what_the_profiles_set(column: int) -> None:
    """docs/reference/settings.md repeats the profiles' values: they must not drift apart."""
    profile = Settings()
    profile.setmodule(f"settings_profiles.{('distributed', 'production')[column - 2]}")
    checked = 0
    for row in profile_table():
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0])
        cell = next(c for c in reversed(row[1:column + 1]) if c not in ("—", "not used"))
        if cell.startswith(("the environment's", "Scrapy's")):
            continue
        for name, value in zip(names, table_values(cell), strict=True):
            shipped = profile[name]
            if isinstance(shipped, bool) or not isinstance(shipped, int | float):
                assert value == shipped, name
            else:
                assert float(value) == shipped, name
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("profile", ["local", "distributed", "production"])
def test_the_shipped_defaults_pass(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECT_ROOT)
    for name in list(os.environ):
        if OWN.match(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SCRAPY_PROJECT", profile)
    settings = get_project_settings()
    check_settings(settings)
    assert not list(unknown_settings(settings))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TMAPI_CONCURRENCY", "0", "TMAPI_CONCURRENCY='0': expected a whole number of at least 1"),
    ("TMAPI_CONCURRENCY", "abc", "TMAPI_CONCURRENCY='abc': expected a whole number"),
    ("TMAPI_CONCURRENCY", "2.5", "expected a whole number"),
    ("TMAPI_CONCURRENCY", True, "expected a whole number"),
    ("TMAPI_RETRY_TIMES", "-1", "TMAPI_RETRY_TIMES='-1': expected a whole number of at least 0"),
    ("TMAPI_RETRY_BASE_DELAY", "soon", "expected a number at least 0 (seconds)"),
    ("TMAPI_RESULT_CAP", "", "TMAPI_RESULT_CAP='': expected a whole number"),
    ("TMAPI_BASE_URL", "api.tmapi.top", "expected an http:// or https:// URL"),
    ("TMAPI_BASE_URL", "http://host/?apiToken=x", "without query or fragment"),
    ("TMAPI_BASE_URL", "http://host:99999", "expected an http:// or https:// URL"),
    ("TMAPI_LIMITER", "no.such.Limiter", "expected the import path of a class"),
    ("TMAPI_FEED_RECORDS", "rows", "expected one of products, sightings"),
    ("TMAPI_PROGRESS_BAR", "yes", "expected true or false"),
    ("TMAPI_PROGRESS_INTERVAL", "nan", "expected a number at least 0"),
    ("MONGO_URI", "localhost:27017", "expected a mongodb:// or mongodb+srv:// URI"),
    ("MONGO_URI", "mongodb://", "expected a mongodb://"),
    ("MONGO_DATABASE", "my.db", "expected a database name"),
    ("MONGO_DATABASE", "", "expected a database name"),
    ("MONGO_BATCH_SIZE", "abc", "MONGO_BATCH_SIZE='abc': expected a whole number of at least 1"),
    ("MONGO_FLUSH_INTERVAL", "0", "expected a number greater than 0 (seconds)"),
    ("MONGO_EMBEDDED_DIR", "", "expected a file path"),
    ("REDIS_URL", "localhost:6379", "expected a redis://, rediss:// or unix:// URL"),
    ("TMAPI_REDIS_PREFIX", "my prefix", "expected letters, digits"),
    ("TMAPI_HEARTBEAT_INTERVAL", "-2", "expected a number greater than 0"),
    ("TMAPI_MAX_DELIVERIES", "0", "expected a whole number of at least 1"),
    ("MAX_IDLE_TIME_BEFORE_CLOSE", "x", "expected a whole number of at least 0"),
])
def test_a_refused_value_is_named_with_what_the_setting_accepts(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(SettingError) as refused:
        check_settings(Settings({name: value}))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("name", "value"), [
    ("TMAPI_CONCURRENCY", "8"), ("TMAPI_CONCURRENCY", 8), ("TMAPI_RETRY_BASE_DELAY", "0.01"),
    ("TMAPI_BASE_URL", "https://api.tmapi.io"), ("TMAPI_BASE_URL", "http://127.0.0.1:8099"),
    ("TMAPI_PROGRESS_BAR", "False"), ("TMAPI_PROGRESS_BAR", "0"), ("TMAPI_PROGRESS_BAR", True),
    ("MONGO_URI", ""), ("MONGO_URI", "mongodb://user:pw@db1:27017,db2:27017/?replicaSet=rs"),
    ("MONGO_URI", "mongodb+srv://cluster.example.net"), ("REDIS_URL", "redis://:pw@h:6379/2"),
    ("REDIS_URL", "unix:///run/redis.sock"), ("MONGO_DATABASE", "tmapi_test"),
    ("TMAPI_LIMITER", "tmapi_crawler.transport.limiter.AdaptiveLimiter"),
    ("STATS_FILE", ""), ("TMAPI_FEED_RECORDS", "sightings"),
])
def test_good_values_pass(name: str, value: Any) -> None:
    check_settings(Settings({name: value}))


def test_settings_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(SettingError, match=r"^TMAPI_RETRY_MAX_DELAY=0.1 must be at least "
                                           r"TMAPI_RETRY_BASE_DELAY=0.5"):
        check_settings(Settings({"TMAPI_RETRY_BASE_DELAY": 0.5, "TMAPI_RETRY_MAX_DELAY": "0.1"}))
    with pytest.raises(SettingError, match="TMAPI_HEARTBEAT_TTL=2 must be greater than"):
        check_settings(Settings({"TMAPI_HEARTBEAT_INTERVAL": 2, "TMAPI_HEARTBEAT_TTL": 2}))


def test_unknown_names_under_the_projects_prefixes_get_a_suggestion() -> None:
    settings = Settings({"TMAPI_CONCURENCY": 2, "MONGO_DB": "x", "REDIS_QWERTY_ZZZ": 1,
                         "OTHER_THING": 1})
    assert dict(unknown_settings(settings)) == {"TMAPI_CONCURENCY": "TMAPI_CONCURRENCY",
                                                "MONGO_DB": "MONGO_DATABASE",
                                                "REDIS_QWERTY_ZZZ": None}


def test_an_unknown_name_is_refused_in_one_line_wherever_it_was_set() -> None:
    given = Settings()
    given.set("TMAPI_MAX_REQUEST", "10", priority="cmdline")
    with pytest.raises(SettingError) as refused:
        check_names(given)
    assert str(refused.value) == ("unknown setting TMAPI_MAX_REQUEST (given with -s): did you "
                                  "mean TMAPI_MAX_REQUESTS?")
    from_a_profile = Settings()
    from_a_profile.set("REDIS_QWERTY_ZZZ", 1, priority="project")
    with pytest.raises(SettingError, match=r"^unknown setting REDIS_QWERTY_ZZZ: tmapi-crawler, "
                                           r"Scrapy and scrapy-redis have no such setting$"):
        check_names(from_a_profile)


def test_the_redis_settings_of_scrapy_redis_stay_allowed() -> None:
    """Read from the installed scrapy-redis, so its own settings are never taken for typos."""
    assert {"REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PARAMS", "REDIS_URL",
            "REDIS_ENCODING", "REDIS_START_URLS_KEY", "REDIS_ITEMS_KEY"} <= library_settings()
    check_names(Settings({"REDIS_HOST": "h", "REDIS_PORT": 6380, "REDIS_PARAMS": {},
                          "REDIS_START_URLS_AS_SET": True}))


# Through the real commands.


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={"601": 30}) as server:
        yield server


@pytest.mark.parametrize(("settings", "env", "message"), [
    ({"TMAPI_CONCURRENCY": "0"}, {},
     "error: TMAPI_CONCURRENCY='0' (given with -s): expected a whole number of at least 1"),
    ({"TMAPI_CONCURRENCY": "abc"}, {}, "error: TMAPI_CONCURRENCY='abc' (given with -s)"),
    ({}, {"TMAPI_CONCURRENCY": "abc"}, "error: TMAPI_CONCURRENCY='abc': expected a whole"),
    ({"MONGO_BATCH_SIZE": "-5"}, {}, "error: MONGO_BATCH_SIZE='-5' (given with -s)"),
    ({"MONGO_URI": "db.example:27017"}, {}, "error: MONGO_URI='db.example:27017'"),
    ({"TMAPI_MAX_REQUEST": "10"}, {}, "error: unknown setting TMAPI_MAX_REQUEST (given with -s): "
                                      "did you mean TMAPI_MAX_REQUESTS?"),
])
def test_a_crawl_with_a_bad_setting_sends_nothing(
    sandbox: SandboxProcess, tmp_path: Path, settings: dict[str, str], env: dict[str, str],
    message: str,
) -> None:
    sandbox.reset()
    result = crawl(tmp_path, "cat_id=601", base_url=sandbox.url, store=False,
                   settings=settings, env=env)
    assert result.returncode == 2
    assert result.log.strip().splitlines() == [result.log.strip()]
    assert result.log.startswith(message)
    assert "Traceback" not in result.log
    assert sandbox.stats()["requests"] == 0


def run_scrapy(*args: str, env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT
               ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items()
                   if not OWN.match(k) and k not in ("SCRAPY_SETTINGS_MODULE", "SCRAPY_PROJECT")}
    return subprocess.run([sys.executable, "-m", "scrapy", *args], cwd=cwd,
                          env={**environment, **(env or {})}, capture_output=True, text=True,
                          timeout=120, check=False)


def test_seed_refuses_a_bad_setting_before_touching_redis(tmp_path: Path) -> None:
    redis_dir = tmp_path / "redis"
    done = run_scrapy("seed", "category_items", "-a", "cat_id=1", "-s",
                      "TMAPI_HEARTBEAT_TTL=1", "-s", f"REDIS_EMBEDDED_DIR={redis_dir}",
                      env={"SCRAPY_PROJECT": "distributed"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: TMAPI_HEARTBEAT_TTL=1 must be greater than "
                                   "TMAPI_HEARTBEAT_INTERVAL=2: or live workers would be taken "
                                   "for dead")
    assert not redis_dir.exists(), "no embedded Redis was started"


def test_a_token_on_the_command_line_draws_a_warning(tmp_path: Path) -> None:
    done = run_scrapy("crawl", "category_items", "-a", "cat_id=x", "-s", f"TMAPI_TOKEN={TOKEN}")
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("warning: TMAPI_TOKEN given with -s is visible")
    assert "export TMAPI_TOKEN" in lines[0]
    assert lines[1].startswith("error: cat_id: 'x' is not an integer")
    assert TOKEN not in done.stderr
    quiet = run_scrapy("crawl", "category_items", "-a", "cat_id=x", env={"TMAPI_TOKEN": TOKEN})
    assert "warning" not in quiet.stderr


def test_a_misspelt_environment_variable_draws_a_warning() -> None:
    done = run_scrapy("crawl", "category_items", "-a", "cat_id=x",
                      env={"TMAPI_TOKEN": TOKEN, "TMAPI_MAX_REQUEST": "10"})
    lines = done.stderr.strip().splitlines()
    assert lines[0] == ("warning: environment variable TMAPI_MAX_REQUEST names no setting (did "
                        "you mean TMAPI_MAX_REQUESTS?): it is ignored")
    assert lines[1].startswith("error: cat_id: 'x' is not an integer")
