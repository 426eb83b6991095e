"""The shape of the code: no import circles between modules, and each package imports only the
packages it may (the arrows of ../README.md "How it works").

Imports are read with `ast` from every module of gateway/ and media/, wherever they sit: at the
top, inside a function (lazy) or under `if TYPE_CHECKING:`, since each of those ties two
modules together as much as any other. A package's own `__init__` is not counted as imported
by its submodules (Python runs it, but it only re-exports).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Known module circles, as the edges that close them (none left: sip/engine.py <-> accounts.py
# and call.py went when those took the AccountHooks / CallHooks Protocols). A circle that
# cannot be broken at once goes here, with why, so the next session sees it.
KNOWN_CIRCLE_EDGES: set[tuple[str, str]] = set()

# The layering, lowest first: a package may import only packages of lower layers, and of those
# only the ones ALLOWED names for it. "gateway" is gateway/__init__.py (__version__).
LAYERS: list[set[str]] = [
    {"media", "gateway", "gateway.errors", "gateway.backoff", "gateway.db"},  # leaves
    {"gateway.config"},  # the YAML file's models
    {"gateway.calls", "gateway.events"},  # pure call domain; event, command and outbox contracts
    # SQLite; per-call I/O; Prometheus; the SIP front (Kamailio's config, process and RPC)
    # campaigns (their model and SQLite tables); webhooks (subscriptions, queues, the sender)
    {
        "gateway.store",
        "gateway.session",
        "gateway.metrics",
        "gateway.front",
        "gateway.campaigns",
        "gateway.webhooks",
    },
    {"gateway.sip", "gateway.api"},  # the pjsua2 adapter; the HTTP API (over the store)
    {"gateway.worker"},  # the SIP worker process: sip/ and session/
    {"gateway.plane"},  # the media plane process: every call's RTP and agent session
    {"gateway.node"},  # the supervisor: store, MQTT, the API and the workers
    {"gateway.cli"},  # `sipedge ...`: runs a node, or talks to one over HTTP
]

# Which package may import which. Every package above config may import gateway,
# gateway.errors and gateway.config (COMMON).
COMMON = {"gateway", "gateway.errors", "gateway.config"}
ALLOWED: dict[str, set[str]] = {
    "media": set(),  # never gateway (tests/media/test_boundaries.py), never pjsua2
    "gateway": set(),
    "gateway.errors": set(),
    "gateway.backoff": set(),
    "gateway.db": set(),  # how the node's SQLite file is opened, and its transactions
    "gateway.config": {"gateway.errors"},
    "gateway.calls": COMMON,
    "gateway.events": COMMON,
    "gateway.store": COMMON | {"gateway.db", "gateway.events"},
    "gateway.campaigns": COMMON | {"gateway.db", "gateway.events"},
    "gateway.webhooks": COMMON | {"gateway.db", "gateway.backoff", "gateway.events"},
    "gateway.session": COMMON | {"gateway.backoff", "gateway.calls", "media"},
    "gateway.metrics": {"gateway.calls"},  # counts the calls/events.py worker events
    "gateway.sip": COMMON
    | {"gateway.backoff", "gateway.calls", "gateway.events", "gateway.session"},
    "gateway.front": COMMON,
    "gateway.api": COMMON
    | {
        "gateway.campaigns",
        "gateway.events",
        "gateway.front",
        "gateway.metrics",
        "gateway.store",
        "gateway.webhooks",
    },
    "gateway.worker": COMMON | {"gateway.calls", "gateway.session", "gateway.sip"},
    "gateway.plane": COMMON | {"gateway.calls", "gateway.session", "gateway.worker", "media"},
    "gateway.node": COMMON
    | {
        "gateway.api",
        "gateway.backoff",
        "gateway.calls",
        "gateway.campaigns",
        "gateway.events",
        "gateway.front",
        "gateway.metrics",
        "gateway.store",
        "gateway.webhooks",
        "gateway.worker",
    },
    "gateway.cli": COMMON | {"gateway.front", "gateway.node"},
}
# Package-level circles left, each as its back edge (none left: events -> node went when the
# command contract moved to events/commands.py, events -> store with the events/outbox.py
# Outbox contract, api -> node with api/common.py's LedgerView). A circle that cannot be broken
# at once goes here, with why, so the next session sees it.
KNOWN_PACKAGE_BACK_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for top in ("gateway", "media") for p in (ROOT / top).rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The gateway/media modules `name` imports, by their full dotted names."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from gateway.api import auth` imports the module gateway.api.auth
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gateway" and len(parts) > 1 else parts[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one node, as one circle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_in(graph, group) for group in groups]


def _circle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A path start -> ... -> start inside one strongly connected group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, so the circle reported is a short one
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"not a circle: {sorted(group)}")


def without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {a: {b for b in bs if (a, b) not in edges} for a, bs in graph.items()}


def test_circles_are_found_and_reported_as_a_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": set()}
    assert circles(graph) == [["a", "b", "c", "a"]]


def test_no_import_circle_between_modules_but_the_known_ones() -> None:
    found = circles(without(GRAPH, KNOWN_CIRCLE_EDGES))
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_known_circles_are_still_there_else_strike_them_from_the_list() -> None:
    gone = {(a, b) for a, b in KNOWN_CIRCLE_EDGES if b not in GRAPH.get(a, set())}
    assert not gone, f"no longer imported, remove from KNOWN_CIRCLE_EDGES: {sorted(gone)}"


def package_graph() -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        mine = package_of(module)
        packages.setdefault(mine, set()).update(
            theirs for theirs in map(package_of, targets) if theirs != mine
        )
    return packages


def test_the_allowed_imports_point_down_the_layers_only() -> None:
    layer = {package: i for i, members in enumerate(LAYERS) for package in members}
    assert sum(map(len, LAYERS)) == len(layer), "a package in two layers"
    assert set(layer) == set(ALLOWED), "each package in ALLOWED sits in one layer"
    upward = {
        f"{package} (layer {layer[package]}) may import {target} (layer {layer[target]})"
        for package, targets in ALLOWED.items()
        for target in targets
        if layer[target] >= layer[package]
    }
    assert not upward, sorted(upward)


def test_each_package_imports_only_the_packages_it_may() -> None:
    packages = package_graph()
    assert set(packages) <= set(ALLOWED), "a new package: add it to LAYERS and ALLOWED"
    wrong = {
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if package_of(module) in ALLOWED
        and package_of(target) != package_of(module)
        and package_of(target) not in ALLOWED[package_of(module)]
    }
    assert not wrong, sorted(wrong)


def test_packages_form_no_circle_but_the_known_back_edges() -> None:
    packages = package_graph()
    found = circles(without(packages, KNOWN_PACKAGE_BACK_EDGES))
    assert not found, "package circles: " + "; ".join(" -> ".join(c) for c in found)
    gone = {(a, b) for a, b in KNOWN_PACKAGE_BACK_EDGES if b not in packages.get(a, set())}
    assert not gone, f"no longer imported, remove from KNOWN_PACKAGE_BACK_EDGES: {sorted(gone)}"


def test_gateway_top_level_holds_only_config_errors_and_small_leaf_helpers() -> None:
    top = {p.stem for p in (ROOT / "gateway").glob("*.py")}
    assert top == {"__init__", "config", "errors", "backoff", "db", "metrics"}, sorted(top)
