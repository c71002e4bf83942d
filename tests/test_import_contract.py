"""The import contract: no cycles between project modules, and no layer importing one above it.

Layers, bottom to top: ``engine`` (torch algorithm) < ``store`` (SQLite) < ``refact_tui.services``
< ``refact_tui.cli`` / ``refact_tui.tui``. A module may import its own layer and the ones below it.
The graph is built from the source with ``ast``: imports inside function bodies and under
``if TYPE_CHECKING:`` count too, because a deferred import still closes a cycle in the design.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "store", "refact_tui")
# (module prefix, rank): the longest matching prefix names a module's layer.
LAYERS: tuple[tuple[str, int], ...] = (
    ("engine", 0),
    ("store", 1),
    ("refact_tui.services", 2),
    ("refact_tui.cli", 3),
    ("refact_tui.tui", 3),
    ("refact_tui", 3),  # the package root and __main__: the entry point, above everything
)
# Third-party packages a layer must never load (the UI frameworks stay out of the headless core).
FORBIDDEN_EXTERNAL = {
    "engine": ("textual", "textual_plotext", "typer"),
    "store": ("textual", "textual_plotext", "typer", "torch"),
    "refact_tui.services": ("textual", "textual_plotext", "typer"),
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as the importing module names it."""

    source: str  # importing module
    target: str  # imported module (a project module after resolution, else the dotted name as written)
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted name -> file of every module of ``packages`` under ``root``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if ".venv" not in path.parts and "__pycache__" not in path.parts:
                out[module_name(path, root)] = path
    return out


def _resolve(name: str, known: set[str]) -> str:
    """The longest prefix of ``name`` that is a project module (``name`` itself when none is)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return name


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in the file, wherever it sits (module top, function body, TYPE_CHECKING block).
    ``from a import b`` targets ``a.b`` when that is a module, else ``a``; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(module, _resolve(a.name, known), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                full = f"{stem}.{alias.name}"
                target = full if full in known else _resolve(stem, known)
                out.append(Import(module, target, node.lineno))
    return out


def build_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> tuple[dict[str, set[str]], list[Import]]:
    """(module -> the project modules it imports, every import statement found)."""
    modules = project_modules(root, packages)
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    found = []
    for module, path in modules.items():
        for imp in imports_of(module, path, known):
            found.append(imp)
            if imp.target in known and imp.target != module:
                graph[module].add(imp.target)
    return graph, found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other (a strongly connected component of two or more),
    as one cycle through them that starts at the group's first module; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0

    for start in sorted(graph):
        if start in index:
            continue
        # iterative Tarjan: (node, iterator over its successors)
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, succ = work[-1]
            advanced = False
            for nxt in succ:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return sorted(_cycle_through(graph, g) for g in groups)


def _cycle_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle inside ``group`` from its first module back to it (breadth-first)."""
    first = min(group)
    parents: dict[str, str] = {}
    frontier = [first]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parents[path[-1]])
                    return [first, *reversed(path[:-1])] if node != first else [first]
                if nxt not in parents:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return sorted(group)  # pragma: no cover - a component always holds a cycle


def layer_of(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, rank in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rank)
    return best


def layer_violations(imports: list[Import]) -> list[str]:
    """``source:line imports target`` for each import of a higher layer or of a forbidden package."""
    out = []
    for imp in imports:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None:
            continue
        if dst is not None and dst[1] > src[1]:
            out.append(f"{imp.source}:{imp.line} imports {imp.target} ({src[0]} may not import {dst[0]})")
        top = imp.target.split(".")[0]
        for prefix, banned in FORBIDDEN_EXTERNAL.items():
            if (imp.source == prefix or imp.source.startswith(prefix + ".")) and top in banned:
                out.append(f"{imp.source}:{imp.line} imports {imp.target} ({prefix} may not import {top})")
    return sorted(set(out))


def _describe(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


# ---------------------------------------------------------------- the checker itself can fail


def test_find_cycles_reports_a_cycle_in_a_synthetic_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a", "f"}, "f": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_a_test_package_that_adds_a_cycle_inside_a_function_is_caught(tmp_path):
    pkg = tmp_path / "engine"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "base.py").write_text("def get():\n    from engine.sub import impl  # deferred: still a cycle\n")
    (pkg / "sub" / "impl.py").write_text("from ..base import get\n")
    (pkg / "leaf.py").write_text("import engine.base\n")
    graph, _ = build_graph(tmp_path, ("engine",))
    assert find_cycles(graph) == [["engine.base", "engine.sub.impl"]]


def test_a_layer_climbing_up_is_caught(tmp_path):
    for folder, text in (("engine", "import store.db\n"), ("store", "def f():\n    from refact_tui.services import x\n"),
                         ("refact_tui/services", "import typer\nfrom refact_tui.cli import main\n"),
                         ("refact_tui/cli", "from refact_tui.services import x\nfrom store import db\n")):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "__init__.py").write_text("")
        (tmp_path / folder / "mod.py").write_text(text)
    (tmp_path / "store" / "db.py").write_text("")
    (tmp_path / "refact_tui" / "__init__.py").write_text("")
    (tmp_path / "refact_tui" / "services" / "x.py").write_text("")
    (tmp_path / "refact_tui" / "cli" / "main.py").write_text("")
    _graph, found = build_graph(tmp_path, ("engine", "store", "refact_tui"))
    bad = layer_violations(found)
    assert [b.split(" ")[0] for b in bad] == [
        "engine.mod:1", "refact_tui.services.mod:1", "refact_tui.services.mod:2", "store.mod:2",
    ], bad


# ---------------------------------------------------------------- the tree


def test_the_graph_sees_the_whole_tree():
    graph, found = build_graph()
    assert {"engine", "store.db", "refact_tui.services.workspace", "refact_tui.cli.main"} <= set(graph)
    assert len(found) > 500  # imports inside functions are counted, not only module tops


def test_no_layer_imports_one_above_it():
    _graph, found = build_graph()
    bad = layer_violations(found)
    assert not bad, "imports that climb a layer:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph, _ = build_graph()
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) between project modules:\n{_describe(cycles)}"
