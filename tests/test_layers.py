"""The package's layers, kept: every import (lazy ones inside functions included) points
down or sideways, never up, and closes no cycle.

    core      config, db, writer, catalog, exposition, ssh, durations, balancers, shipped,
              sdnotify, readapi
    domains   collect, detect, intake, incidents, notify, runbooks, images, fleet, dashboards
              (their models, services, renderers, collectors)
    flows     each domain's flows.py (work that spans domains), status (the read-only view
              over all of them)
    entry     cli.py and every domain's cli.py, cli_support, daemon, web, demo, __main__,
              and what runs flows: the detection loop, the webhook's route

`reliability.testing` (the rig's stand-ins) is reachable only from `reliability.demo` and
the tests: no command but `demo` loads it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reliability"

CORE, DOMAIN, FLOWS, ENTRY = 0, 1, 2, 3
LAYER_NAMES = {CORE: "core", DOMAIN: "domain", FLOWS: "flows", ENTRY: "entry point"}
CORE_MODULES = {
    "config", "db", "writer", "catalog", "exposition", "ssh", "durations", "balancers", "shipped",
    "sdnotify", "readapi",
}  # fmt: skip
ENTRY_MODULES = {"cli", "cli_support", "cli_reference", "daemon", "daemon_report", "web", "demo"}
FLOWS_PACKAGES = {"status"}
# The threads and handlers that run flows: the detection loop, the webhook's route and
# Slack's interactions transports.
RUNNERS = {
    "reliability.detect.loop",
    "reliability.intake",
    "reliability.intake.alertmanager",
    "reliability.oncall.route",
    "reliability.oncall.socket",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(module: str) -> Iterator[tuple[str, int]]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> Iterator[tuple[str, int]]:
    """(imported module of this package, line) for every import statement in `source`,
    at any depth: an import inside a function counts like one at the top. Imports under
    `if TYPE_CHECKING:` are for annotations only and never run."""
    tree = ast.parse(source)
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [n if n in MODULES else base for n in names]
        else:
            continue
        for name in names:
            while name not in MODULES and "." in name:
                name = name.rpartition(".")[0]
            if name in MODULES and name != "reliability":
                yield name, node.lineno


def layer(module: str) -> int | None:
    """The module's layer; None for the rig (`reliability.testing`) and the root."""
    parts = module.split(".")[1:]
    if not parts or parts[0] == "__main__":
        return ENTRY if parts else None
    top = parts[0]
    if module in RUNNERS:
        return ENTRY
    if top == "testing":
        return None
    if top in CORE_MODULES:
        return CORE
    if top in ENTRY_MODULES or parts[-1] == "cli":
        return ENTRY
    if top in FLOWS_PACKAGES or parts[-1] == "flows":
        return FLOWS
    return DOMAIN


def test_every_import_points_down_or_sideways():
    upward = []
    for module in sorted(MODULES):
        mine = layer(module)
        if mine is None:
            continue
        for target, line in imports(module):
            theirs = layer(target)
            if theirs is not None and theirs > mine:
                upward.append(
                    f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} "
                    f"({LAYER_NAMES[mine]}) imports {target} ({LAYER_NAMES[theirs]})"
                )
    assert upward == []


def test_only_the_demo_reaches_the_rig():
    reached = [
        f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} imports {target}"
        for module in sorted(MODULES)
        if not module.startswith(("reliability.testing", "reliability.demo"))
        for target, line in imports(module)
        if target.startswith("reliability.testing")
    ]
    assert reached == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back():
    graph = {m: {t for t, _ in imports(m) if t != m} for m in MODULES}
    assert cycles(graph) == []


def test_no_two_domains_import_each_other():
    """Between packages too: `incidents` writing Slack's outbox while `notify` renders
    incidents is a cycle even when no single module closes it."""

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module in MODULES:
        if layer(module) != DOMAIN:
            continue
        for target, _ in imports(module):
            if layer(target) == DOMAIN and package(target) != package(module):
                graph.setdefault(package(module), set()).add(package(target))
    assert cycles(graph) == []


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("reliability.config.load", CORE),
        ("reliability.incidents.service", DOMAIN),
        ("reliability.runbooks.flows", FLOWS),
        ("reliability.runbooks.cli", ENTRY),
        ("reliability.demo.run", ENTRY),
        ("reliability.testing.fleet", None),
    ],
)
def test_layers_are_read_from_the_module_path(module: str, expected: int | None):
    assert layer(module) == expected


def test_the_checker_sees_lazy_and_relative_imports():
    """An import inside a function body is found, as `config` once reached `detect`."""
    source = (
        "import os\n"
        "def check():\n"
        "    from reliability.detect.builtin import BUILTIN\n"
        "    from ..incidents import service\n"
    )
    found = [name for name, _ in imports_in(source, "reliability.config")]
    assert found == ["reliability.detect.builtin", "reliability.incidents.service"]
    assert all(layer(name) > layer("reliability.config.load") for name in found)
