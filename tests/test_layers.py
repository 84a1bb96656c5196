"""The house's floors: every import of ``tmapi_crawler`` points to its own floor or one below,
and no modules import each other in a circle.

Read from the source with ``ast``, so an import inside a function (a lazy import, often the way
an upward edge hides) counts as much as one at the top, and ``TYPE_CHECKING`` imports do too:
a type that needs a higher floor is a sign the code sits on the wrong one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tmapi_crawler

PACKAGE = Path(tmapi_crawler.__file__).parent

#: The floors, from the bottom (the layer order of issue 25, docs/CONVENTIONS.md's direction):
#: a module may import only from its own floor or a lower one. Data rather than code, so that
#: moving a module is one edit here and the reason for a floor reads beside it. A key names a
#: module or a package (every module under it); the longest key that matches wins.
LAYERS: dict[str, int] = {
    # L0: the API's shape and what everything else needs without knowing the crawl.
    "api": 0, "aio": 0, "stats": 0, "signals": 0, "validation": 0, "folders": 0,
    "settings": 0, "__init__": 0, "shell": 0, "quoting": 0, "deprecations": 0, "per_crawler": 0,
    # L1: the crawl's plan, its items, its identity, how it closes.
    "plan": 1, "items": 1, "normalize": 1, "scalars": 1, "crawl": 1, "closing": 1,
    # logformatter: it says how an item was dropped, so it knows the items (L1), not below.
    "logformatter": 1,
    # progress: its counters and its line are also the cluster's (``distributed.status``,
    # ``scrapy status``); it reads nothing but the stats, so it sits low, not beside the spider.
    "progress": 1,
    # servers: supervising the embedded mongod and redis-server the storage and the cluster start.
    "servers": 1,
    # L2: what to fetch next.
    "frontier": 2,
    # L3: one paid call, and what is kept.
    "transport": 3, "storage": 3,
    # L4: the Redis backend; what remains of spend is reporting (the estimate).
    "distributed": 4, "spend": 4,
    # L5: a page's accounting, the spider, the feed exporters.
    "accounting": 5, "spiders": 5, "exporters": 5,
    # L6: the user's side: commands, the web app, alerts, the CLI, the sandbox.
    "commands": 6, "web": 6, "alerts": 6, "export": 6, "cli": 6, "demo": 6,
    "server_command": 6, "cluster_command": 6, "sandbox": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"tmapi_crawler.{module} is on no floor: add it to LAYERS")


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module ``name`` (dotted, under tmapi_crawler) is, or its nearest package."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``module`` imports, at the top or inside a function."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = [] if module == "__init__" else module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(["tmapi_crawler", *base, *filter(None, [node.module])])
            else:
                prefix = node.module or ""
            # ``from pkg import module`` imports the module, ``from module import name`` the
            # module.
            names = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "tmapi_crawler" or not name.startswith("tmapi_crawler."):
                continue
            target = _resolve(name.removeprefix("tmapi_crawler."), known)
            if target is not None and target != module:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports(module, path, known) for module, path in known.items()}


def upward_edges(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(source, target) for source, targets in edges.items() for target in targets
            if layer(target) > layer(source)}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def circle(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """One circle through a component's first module, the shortest: what to read to cut it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(edges.get(node, set()) & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no circle through {start}")


def _described(edges: set[tuple[str, str]]) -> str:
    return "\n".join(f"  {s} (L{layer(s)}) -> {t} (L{layer(t)})" for s, t in sorted(edges))


def test_every_module_is_on_a_floor() -> None:
    for module in modules():
        layer(module)


def test_no_import_points_to_a_higher_floor() -> None:
    upward = upward_edges(graph())
    assert not upward, f"imports pointing to a higher floor:\n{_described(upward)}"


def test_no_import_circle() -> None:
    edges = graph()
    found = cycles(edges)
    assert not found, "modules importing each other in a circle:\n" + "\n".join(
        "  " + " -> ".join(circle(edges, component)) for component in found)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker finds a function-level ``from pkg import module`` (what hides most upward
    edges), and reports an upward one and a circle."""
    known = {"storage.runs": tmp_path / "a.py", "distributed": tmp_path / "b.py",
             "distributed.status": tmp_path / "c.py", "storage": tmp_path / "d.py"}
    source = tmp_path / "a.py"
    source.write_text("def f():\n    from tmapi_crawler.distributed import status\n"
                      "    from . import store\n")
    found = imports("storage.runs", source, known)
    assert found == {"distributed.status", "storage"}
    edges = {"storage.runs": found, "distributed.status": {"storage.runs"}}
    assert upward_edges(edges) == {("storage.runs", "distributed.status")}
    assert cycles(edges) == [["distributed.status", "storage.runs"]]
    assert circle(edges, ["distributed.status", "storage.runs"]) == [
        "distributed.status", "storage.runs", "distributed.status"]
