"""The house's rules, read from the source: imports flow one way (no cycle among layerfilm's modules,
counting imports inside functions, not those only for type checkers), and the library never imports
its command line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    out = {}
    for f in (ROOT / "layerfilm").rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The layerfilm modules ``name`` imports anywhere in its file, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for t in ast.walk(tree) if isinstance(t, ast.If) and "TYPE_CHECKING" in ast.unparse(t.test)
                   for n in ast.walk(t)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for n in ast.walk(tree):
        if id(n) in typing_only:
            continue
        targets = []
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - n.level + 1] + ([n.module] if n.module else []))
            targets = [f"{base}.{a.name}" for a in n.names] + [base]
        elif isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("layerfilm"):
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_check_finds_a_cycle_when_there_is_one():
    g = graph()
    g["layerfilm.io.scan"] = g["layerfilm.io.scan"] | {"layerfilm.film"}  # film imports scan (through study)
    assert any("layerfilm.io.scan" in c and "layerfilm.film" in c for c in cycles(g))


def test_the_library_never_imports_the_command_line():
    g = graph()
    library = [m for m in g if not m.startswith("layerfilm.cli") and m != "layerfilm.__main__"]
    assert [m for m in library if any(d.startswith("layerfilm.cli") for d in g[m])] == []
    assert "layerfilm.cli.commands" in g["layerfilm.__main__"] or "layerfilm.cli" in g["layerfilm.__main__"]


def test_every_module_is_in_a_package_that_says_what_it_holds():
    top = {p.stem for p in (ROOT / "layerfilm").glob("*.py")}
    assert top <= {"__init__", "__main__", "callbacks", "compare", "config", "errors", "film", "film_options", "options",
                   "registry", "stability", "study", "text"}, top
    for init in (ROOT / "layerfilm").glob("*/__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), init
