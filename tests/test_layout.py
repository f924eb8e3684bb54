"""The package's shape: its top-level parts stack in layers (LAYERS), no import cycles (imports
inside functions included: a lazy import that dodges a cycle is still one), no module past 500
lines, heavy imports confined to one module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "router"


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def parse(path: Path) -> ast.Module:
    """`ast.parse`, tried again on CPython 3.11's spurious "AST constructor recursion depth
    mismatch" (gh-106905): the conversion's depth count lives in interpreter-wide state, and
    another thread converting an AST at the same time (3.11's traceback formatting does, for an
    exception logged by a server thread) upsets it. Each call starts its count afresh."""
    for attempt in range(5):
        try:
            return ast.parse(path.read_text(encoding="utf-8"))
        except SystemError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def imports(path: Path, known: dict[str, Path]) -> dict[str, set[str]]:
    """Every module of the package that `path` imports, anywhere in the file (by top-level
    package name for third-party modules)."""
    out: dict[str, set[str]] = {"router": set(), "other": set()}
    for node in ast.walk(parse(path)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if n in known else node.module for n in names]
        for name in names:
            if name.split(".")[0] == "router":
                while name not in known:  # an attribute of a module: the module
                    name = name.rsplit(".", 1)[0]
                out["router"].add(name)
            else:
                out["other"].add(name.split(".")[0])
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, set()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_even_through_imports_inside_functions() -> None:
    known = modules()
    graph = {name: imports(path, known)["router"] - {name} for name, path in known.items()}
    assert cycles(graph) == []


# router/'s top-level parts (packages and loose modules), top to bottom: each imports only the
# parts below it, imports inside functions and under TYPE_CHECKING included. A new part gets
# its place here.
LAYERS = (
    "cli",  # commands: a thin layer over the library or a running server
    "server",  # HTTP: the app, keys, connections, streams, admin, metrics
    "wire",  # each API's shapes <-> the engine's types
    "engine",  # the pipeline: cache, score, decide, attempts, bookkeeping; which store is used
    "shared",  # Redis and PostgreSQL implementations of the stores
    "dashboard",  # the savings summary and its page
    "governance",  # budgets, categories, guardrails, audits, quality
    "complexity",  # the estimators
    "ledger",  # the books: the ledger, its sums, prices, SQLite
    "backends",  # the Backend seam: local workers, servers, the cloud
    "config",  # models.toml
    "types",  # requests, decisions, results, and the checks they make
    "errors",
    "units",  # the vocabulary below everything
    "reachability",
    "chunks",
)
MAX_LOOSE = 8  # loose top-level modules, besides __init__ and __main__


def part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[1] != "__main__" else None


def test_the_top_level_parts_stack_in_layers() -> None:
    known = modules()
    upward = []
    for name, path in known.items():
        here = part(name)
        if here is None:
            continue
        assert here in LAYERS, f"{here}: give it its place in LAYERS"
        for target in imports(path, known)["router"]:
            there = part(target)
            if there is not None and there != here and LAYERS.index(there) < LAYERS.index(here):
                upward.append(f"{name} imports {target} ({here} is below {there})")
    assert upward == []
    loose = [p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(loose) <= MAX_LOOSE, sorted(loose)


def test_no_module_is_longer_than_500_lines() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert long == {}


def test_heavy_dependencies_have_one_home_each() -> None:
    known = modules()
    homes = {"llama_cpp": set(), "litellm": set(), "starlette": set(), "uvicorn": set()}
    for name, path in known.items():
        for dep in imports(path, known)["other"] & set(homes):
            homes[dep].add(name)
    assert homes["llama_cpp"] == {"router.backends.llama_process"}
    assert homes["litellm"] == {"router.backends.cloud"}
    assert all(name.startswith("router.server.") for name in homes["starlette"])  # the package
    assert homes["uvicorn"] == {"router.server.connections"}


def test_no_folder_of_scripts_or_tests_shadows_the_standard_library() -> None:
    """A script run by its path (`python tests/llama_server.py`) has its folder first on
    sys.path: a `tests/types/` there hides the standard library's `types` from everything."""
    import sys

    top = ROOT.parent
    names = {p.stem for folder in ("tests", "scripts") for p in (top / folder).iterdir()}
    assert names & set(sys.stdlib_module_names) == set()
