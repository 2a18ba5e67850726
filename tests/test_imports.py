"""The allowed imports between packages (DESIGN §4 and §8, and each package's docstring).

Every module under ``src/inferaudit`` is parsed with ``ast``; every ``import`` counts, at module
level and inside functions (an import in a function is a dependency all the same). Imports under
``if TYPE_CHECKING:`` count for the direct rules but not for what a module pulls in at run time.

Direct rules (what a module may import of ours):
- ``errors`` nothing; ``home`` only ``errors``;
- ``measure`` only ``errors``, ``home`` and itself: nothing above it, never the twin;
- ``judge`` only ``errors``, ``measure`` and itself, never ``measure.load`` nor the modules that
  send traffic (``measure.probes.send``, ``measure.fingerprint_record``): the judges are pure;
- ``seal`` only ``errors``, ``home``, ``measure``, ``judge`` and itself; ``seal.ledger`` nothing
  of ours but ``errors``, ``home``, ``seal.keys`` and itself;
- ``intent`` only ``errors``, ``home``, ``measure`` (never ``measure.load``), ``seal``, the judge's
  verdict types and itself; ``intent.catalog``/``intent.roofline`` only ``errors`` and the catalog;
- ``present`` only ``errors``, ``home``, ``measure``, ``judge``, ``seal``, ``intent`` and itself;
- ``audit`` anything but the CLI; ``twin`` only ``intent.catalog``, ``intent.roofline``,
  ``errors`` and itself;
- nothing but the CLI (and ``python -m inferaudit``) imports the CLI; nothing but the demo
  (``audit.demo``) and the ``inferaudit twin`` command (``cli.twin``) imports the twin.
Run-time rules (everything a module pulls in, its packages' ``__init__`` included):
- a judge never loads ``measure.load`` or the twin, not even through another module;
- the twin loads nothing of ours but itself, ``intent.catalog``, ``intent.roofline`` and
  ``errors``: it shares no code with the client it tests;
- no import cycles between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = "inferaudit"

# Known edges that break a rule today and are being fixed by another change. Each names why;
# the lead removes them when the fix lands (the test fails on an entry that is no longer needed).
# Keys: (importing module, imported module) for direct rules; for run-time rules, the imported
# module is the first hop of the path that reaches the forbidden module.
KNOWN: dict[tuple[str, str], str] = {
    # (none left: the judges' probes moved to measure/probes, the fingerprint's recording to
    # measure/fingerprint_record; add an entry here only with a reason and an owner)
}
# Known import cycles (sorted member lists), each with why; same rule as KNOWN.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {
    # seal/verified.py (new, SEAL) imports verify_run inside open_verified while seal/verify.py
    # imports VerifiedRun at module level: a function-level cycle; SEAL to untie.
    ("seal.verified", "seal.verify"): "function-level import in seal.verified.open_verified",
}

RULES: dict[str, tuple[str, ...]] = {
    # most specific prefix wins; a name allows that module or package and everything under it
    "errors": (),
    "home": ("errors",),
    "measure": ("errors", "home", "measure"),
    "judge": ("errors", "measure", "judge"),
    "seal": ("errors", "home", "measure", "judge", "seal"),
    "seal.ledger": ("errors", "home", "seal.keys", "seal.ledger"),
    "intent": ("errors", "home", "measure", "seal", "judge=", "judge.verdict", "intent"),
    "intent.catalog": ("errors",),
    "intent.roofline": ("errors", "intent.catalog"),
    "present": ("errors", "home", "measure", "judge", "seal", "intent", "present"),
    "audit": ("errors", "home", "measure", "judge", "seal", "intent", "present", "audit", "twin"),
    "twin": ("errors", "intent.catalog", "intent.roofline", "twin"),
    "cli": (
        "errors",
        "home",
        "measure",
        "judge",
        "seal",
        "intent",
        "present",
        "audit",
        "cli",
        "twin",
    ),
    "__main__": ("cli",),
}
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "judge": ("measure.load", "measure.probes.send", "measure.fingerprint_record"),
    "intent": ("measure.load",),
}
ONLY_IMPORTED_BY: dict[str, tuple[str, ...]] = {
    "cli": ("cli", "__main__"),
    "twin": ("twin", "audit.demo", "cli.twin"),
}
NEVER_LOADS: dict[str, tuple[str, ...]] = {
    "judge": ("measure.load", "twin"),
    "measure": ("twin", "judge", "seal", "intent", "present", "audit", "cli"),
}
TWIN_MAY_LOAD = ("twin", "intent.catalog", "intent.roofline", "errors", "", "intent=")


@dataclass(frozen=True)
class Edge:
    source: str  # module names without the "inferaudit." prefix; "" is the root package
    target: str
    line: int
    runtime: bool  # False under ``if TYPE_CHECKING:``


def _short(name: str) -> str:
    return "" if name == ROOT else name.removeprefix(ROOT + ".")


def _modules() -> dict[str, tuple[Path, bool]]:
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        found[_short(".".join(parts))] = (path, package)
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, runtime: bool = True) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for sub in child.body:
                yield sub, False
                yield from _walk(sub, False)
            for sub in child.orelse:
                yield sub, runtime
                yield from _walk(sub, runtime)
            continue
        yield child, runtime
        yield from _walk(child, runtime)


def _targets(module: str, package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            here = (ROOT + ("." + module if module else "")).split(".")
            base = here if package else here[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = []
        for alias in node.names:
            candidate = f"{prefix}.{alias.name}"
            names.append(candidate if _short(candidate) in MODULES else prefix)
    return [_short(n) for n in names if n == ROOT or n.startswith(ROOT + ".")]


def _edges() -> list[Edge]:
    edges = []
    for module, (path, package) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, runtime in _walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(module, package, node):
                    if target != module:
                        edges.append(Edge(module, target, node.lineno, runtime))
    return edges


EDGES = _edges()


def _under(name: str, prefix: str) -> bool:
    """``prefix`` names a module or package (and all under it); ``x=`` names ``x`` alone."""
    if prefix.endswith("="):
        return name == prefix[:-1]
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _rule(table: dict[str, tuple[str, ...]], module: str) -> tuple[str, ...] | None:
    keys = [k for k in table if _under(module, k)]
    return table[max(keys, key=len)] if keys else None


def _where(edge: Edge) -> str:
    return f"{edge.source} -> {edge.target} (line {edge.line})"


def _direct_violations(edges: list[Edge] = EDGES) -> list[tuple[Edge, str]]:
    bad = []
    for edge in edges:
        if edge.target == "":  # ``from inferaudit import __version__``
            continue
        allowed = _rule(RULES, edge.source)
        if allowed is not None and not any(_under(edge.target, a) for a in allowed):
            bad.append((edge, "not among the imports its package allows"))
        forbidden = _rule(FORBIDDEN, edge.source) or ()
        if any(_under(edge.target, f) for f in forbidden):
            bad.append((edge, "forbidden for its package"))
        for guarded, importers in ONLY_IMPORTED_BY.items():
            if _under(edge.target, guarded) and not any(_under(edge.source, i) for i in importers):
                bad.append((edge, f"only {', '.join(importers)} may import {guarded}"))
    return bad


def _graph(runtime_only: bool, with_packages: bool) -> dict[str, list[str]]:
    """Module -> modules it loads, sorted; ``with_packages`` adds, after them, each target's
    parent packages and the module's own (their ``__init__`` runs first)."""
    graph: dict[str, list[str]] = {}
    for module in MODULES:
        direct = sorted(
            {e.target for e in EDGES if e.source == module and (e.runtime or not runtime_only)}
        )
        implied: set[str] = set()
        if with_packages:
            for name in [module, *direct]:
                parts = name.split(".") if name else []
                implied.update(".".join(parts[:i]) for i in range(len(parts)))
        graph[module] = direct + sorted(implied - set(direct) - {module})
    return graph


def _path(graph: dict[str, list[str]], start: str, bad: tuple[str, ...]) -> list[str] | None:
    """The shortest import path from ``start`` to a module under one of ``bad``, if any."""
    previous: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        if current != start and any(_under(current, b) for b in bad):
            path = [current]
            while (step := previous[path[-1]]) is not None:
                path.append(step)
            return path[::-1]
        for nxt in graph.get(current, ()):
            if nxt not in previous:
                previous[nxt] = current
                queue.append(nxt)
    return None


def _runtime_violations() -> list[tuple[str, str, list[str]]]:
    graph = _graph(runtime_only=True, with_packages=True)
    bad = []
    for module in MODULES:
        never = _rule(NEVER_LOADS, module)
        if never is not None and (path := _path(graph, module, never)) is not None:
            bad.append((module, path[1], path))
        if _under(module, "twin"):
            outside = tuple(m for m in MODULES if not any(_under(m, a) for a in TWIN_MAY_LOAD))
            if (path := _path(graph, module, outside)) is not None:
                bad.append((module, path[1], path))
    return bad


def _cycles() -> list[list[str]]:
    graph = _graph(runtime_only=True, with_packages=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_parser_sees_every_kind_of_import() -> None:
    """The rules are only as good as the edges: module-level, function-level, relative,
    ``from package import module`` and ``TYPE_CHECKING`` imports are all found."""
    assert len(MODULES) > 50 and "twin.server" in MODULES and "" in MODULES
    by_pair = {(e.source, e.target): e for e in EDGES}
    assert ("cli.twin", "twin.server") in by_pair  # module level, a module
    assert ("__main__", "cli") in by_pair  # ``from inferaudit.cli import main``: the package
    assert by_pair[("twin.launch", "twin.options")].runtime
    module, package = "seal.keys", False
    tree = ast.parse("from .ledger import store\nfrom . import keys as k\nimport inferaudit.home\n")
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    found = [t for n in nodes for t in _targets(module, package, n)]
    assert found == ["seal.ledger.store", "seal.keys", "home"]
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import inferaudit.cli\n"
        "def f():\n    from inferaudit.twin import server\n"
    )
    walked = [
        (t, runtime)
        for n, runtime in _walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for t in _targets("judge.x", False, n)
    ]
    assert walked == [("cli", False), ("twin.server", True)]


def test_the_rules_catch_crafted_edges() -> None:
    """Each rule, fed an edge that breaks it, says so (and a harmless edge passes)."""
    crafted = {
        ("measure.metrics", "twin.server"): 2,  # not allowed + only the demo/CLI import the twin
        ("measure.metrics", "judge.verdict"): 1,  # upward
        ("judge.caching", "measure.load.client"): 1,  # forbidden (allowed package, banned part)
        ("judge.suite", "measure.probes.send"): 1,  # sends traffic
        ("judge.suite", "measure.probes.plan"): 0,  # plans positions from the seed, sends nothing
        ("seal.ledger.store", "seal.evidence"): 1,  # the ledger imports only keys of seal
        ("intent.reconcile", "judge.caching"): 1,  # judge internals
        ("present.report", "cli.tables"): 2,  # not allowed + only the CLI imports the CLI
        ("twin.server", "measure.load.sse"): 1,  # the twin shares no code with the client
        ("audit.run", "twin.launch"): 1,  # only audit.demo may start the twin
        ("intent.reconcile", "judge.verdict"): 0,
        ("audit.demo", "twin.launch"): 0,
    }
    for (source, target), count in crafted.items():
        found = _direct_violations([Edge(source, target, 1, True)])
        assert len(found) == count, (source, target, found)


def test_direct_imports_follow_the_package_rules() -> None:
    bad = [(e, why) for e, why in _direct_violations() if (e.source, e.target) not in KNOWN]
    assert not bad, "import rule broken:\n" + "\n".join(f"{_where(e)}: {why}" for e, why in bad)


def test_run_time_imports_keep_the_judges_and_the_twin_apart() -> None:
    bad = [(m, hop, p) for m, hop, p in _runtime_violations() if (m, hop) not in KNOWN]
    assert not bad, "a module loads what it must not:\n" + "\n".join(
        " -> ".join(p) for _, _, p in bad
    )


def test_no_import_cycles() -> None:
    cycles = [c for c in _cycles() if tuple(c) not in KNOWN_CYCLES]
    assert not cycles, f"import cycles (module or function level): {cycles}"


def test_every_known_exception_is_still_needed() -> None:
    """An allow-list entry whose edge no longer breaks a rule must go (the lead removes it)."""
    used = {(e.source, e.target) for e, _ in _direct_violations()}
    used |= {(m, hop) for m, hop, _ in _runtime_violations()}
    stale: list[object] = sorted(k for k in KNOWN if k not in used)
    stale += sorted(c for c in KNOWN_CYCLES if list(c) not in _cycles())
    assert not stale, f"remove these KNOWN entries from tests/test_imports.py: {stale}"


@pytest.mark.parametrize("package", sorted(p for p in RULES if "." not in p and p != "__main__"))
def test_every_package_states_its_contract(package: str) -> None:
    """The rules above are the ones each package's docstring states (errors/home are modules)."""
    path, is_package = MODULES[package]
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc, f"{path} has no docstring"
    if is_package and package not in ("cli", "audit"):
        assert "import" in doc, f"{path}: the docstring does not say what the package may import"
