"""The headless core (engine/, store/, refact_tui/services/) never imports the UI frameworks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_DIRS = ["engine", "store", "refact_tui/services"]
FORBIDDEN = {"textual", "textual_plotext", "typer", "refact_tui.tui", "refact_tui.cli"}


def _core_files() -> list[Path]:
    return sorted(p for d in CORE_DIRS for p in (ROOT / d).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_core_files_exist():
    assert len(_core_files()) >= 10


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_has_no_ui_imports(path: Path):
    bad = sorted(m for m in _imported_modules(path) if _is_forbidden(m))
    assert not bad, f"{path.relative_to(ROOT)} imports UI modules: {bad}"


def test_importing_core_packages_loads_no_ui_framework():
    modules = [
        str(p.relative_to(ROOT).with_suffix("")).replace("/", ".")
        for p in _core_files()
        if p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('textual', 'typer', 'textual_plotext'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"UI modules loaded by the core: {out.stdout.strip()}"


def _engine_files() -> list[Path]:
    return sorted((ROOT / "engine").rglob("*.py"))


@pytest.mark.parametrize("path", _engine_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_never_imports_store_or_services(path: Path):
    """The algorithm layer sits below persistence and orchestration (lazy imports included)."""
    bad = sorted(
        m for m in _imported_modules(path)
        if m == "store" or m.startswith("store.") or m.startswith("refact_tui")
    )
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _store_files() -> list[Path]:
    return sorted((ROOT / "store").rglob("*.py"))


@pytest.mark.parametrize("path", _store_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_store_never_imports_services_cli_or_tui(path: Path):
    """Persistence sits below orchestration and the UIs: it may import engine value types, nothing above
    (lazy imports included; the layer and cycle rules for the whole tree are in test_import_contract.py)."""
    bad = sorted(m for m in _imported_modules(path) if m == "refact_tui" or m.startswith("refact_tui.")
                 or _is_forbidden(m))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_relative_imports_hide_from_these_checks():
    """The checks above read absolute imports only, so the packages they guard use none other."""
    relative = []
    for path in _core_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        relative += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.level]
    assert not relative, f"relative imports: {relative}"
