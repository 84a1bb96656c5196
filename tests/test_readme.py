"""The README's Python query snippets, pasted into ``scrapy mongo shell``, print their results.

Two real crawls of the sandbox (the second after prices moved and a category shrank) give the
data every snippet asks about: price drops, new products, history, vanished products. Each
snippet is fed, as a user would paste it, into the real shell command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.crawling import PROJECT_ROOT, TOKEN, crawl
from tests.servers import MongodProcess
from tmapi_crawler.sandbox.process import SandboxProcess

README = PROJECT_ROOT / "README.md"
SIZES = {"1031922": 80, "1031923": 40}
MARKER = "@@ end of snippet {} @@"


def python_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def crawled(mongod: MongodProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database after two crawls: the second saw changed prices and fewer products."""
    database = "readme_snippets"
    tmp = tmp_path_factory.mktemp("readme")
    with SandboxProcess(token=[TOKEN], size=SIZES) as sandbox:
        for run, sizes in enumerate((SIZES, {**SIZES, "1031922": 70})):
            sandbox.configure(price_epoch=run, sizes=sizes)
            result = crawl(tmp / str(run), "cat_id=1031922,1031923", "language=en,zh",
                           base_url=sandbox.url, mongo_uri=mongod.uri, database=database,
                           settings={"LOG_LEVEL": "INFO"})
            assert result.returncode == 0, result.log[-3000:]
    assert result.stat("tmapi/products/vanished") == 10
    return database


def shell(mongod: MongodProcess, database: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MONGO_URI": mongod.uri, "MONGO_DATABASE": database}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    env.pop("SCRAPY_PROJECT", None)
    return subprocess.run([sys.executable, "-m", "scrapy", "mongo", "shell"], cwd=PROJECT_ROOT,
                          env=env, input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


def without_prompts(out: str) -> list[str]:
    lines = [re.sub(r"^(?:(?:>>>|\.\.\.) )+", "", line) for line in out.splitlines()]
    return [line for line in lines if line.strip() not in ("", ">>>", "...")]


def test_the_readme_has_the_snippets_this_test_expects() -> None:
    snippets = python_snippets()
    assert len(snippets) == 2
    assert "Price drops" in snippets[1]


def test_every_snippet_pasted_into_the_shell_prints_its_results(
    mongod: MongodProcess, crawled: str
) -> None:
    snippets = python_snippets()
    pasted = "".join(f"{snippet}\n\nprint({MARKER.format(i)!r})\n"
                     for i, snippet in enumerate(snippets))
    done = shell(mongod, crawled, pasted)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "Error" not in done.stderr, done.stderr
    lines = without_prompts(done.stdout)
    outputs: list[list[str]] = [[]]
    for line in lines:
        if line == MARKER.format(len(outputs) - 1):
            outputs.append([])
        else:
            outputs[-1].append(line)
    assert len(outputs) == len(snippets) + 1, done.stdout[-2000:]
    text = "\n".join(lines)
    assert "<pymongo" not in text, "a cursor printed as an object"
    assert "(no documents)" not in text, "a snippet found nothing in data made to have it"

    basics, history = outputs[0], outputs[1]
    assert sum("'titles': {'en':" in line for line in basics) == 20, "ten documents per query"
    drops = [line for line in history if re.match(r"^\s*\d+\.\d%\s+[\d.]+ -> ", line)]
    assert drops, "the price drops loop printed rows"
    assert any(line.isdigit() for line in history), "the counts printed"
    assert any("'changes': {'price':" in line for line in history), "a price over time"
    assert any(re.match(r"^\{'_id': '(price|sales_90d|available_in)', 'products': \d+\}$", line)
               for line in history), "changes per field"
    assert any("'vanished': {'1031922':" in line for line in history), "vanished products"
    assert any("'vs_avg90':" in line for line in history), "15 % below the 90-day average"
    assert any("'last_change': {'at':" in line for line in history), "at the lowest ever"
