"""The house rules that keep the package readable: no import cycles among its modules (imports inside
functions count), no underscore name imported across modules (package, widgets, benchmarks,
notebooks), and a public API whose every name resolves."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import koch_explore

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "koch_explore"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = ["koch_explore", "widgets", *rel.with_suffix("").parts[1:]] if rel.parts[0] == "widgets" else list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    files = [*PKG.rglob("*.py"), *(ROOT / "widgets").rglob("*.py")]
    return {_module_name(p): p for p in files}


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the file, nested ones too."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(target, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
    return out


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, name, _ in _imports(m, p):
            dep = f"{target}.{name}" if name and f"{target}.{name}" in mods else target
            # a module may import its own package's __init__ (which re-exports it): not a cycle of concepts
            if dep in mods and dep != m and not m.startswith(dep + "."):
                graph[m].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from b import x\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from a import y\n")
    graph = {"a": set(), "b": set()}
    for m, p in {"a": a, "b": b}.items():
        graph[m] |= {t for t, _, _ in _imports(m, p) if t in graph}
    assert _cycles(graph) == [["a", "b"]]


def test_no_import_cycles_among_the_package_modules():
    cycles = _cycles(_graph(_modules()))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__")


def test_no_underscore_name_is_imported_from_another_module():
    found = []
    mods = _modules()
    for m, p in mods.items():
        for target, name, line in _imports(m, p):
            if _private(name) and target != m and target.startswith("koch_explore"):
                found.append(f"{p.relative_to(ROOT)}:{line}: {name} from {target}")
    for p in sorted((ROOT / "benchmarks").glob("*.py")):
        for target, name, line in _imports("benchmarks", p):
            if _private(name) and target.startswith("koch_explore"):
                found.append(f"{p.relative_to(ROOT)}:{line}: {name} from {target}")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            tree = ast.parse("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("koch_explore"):
                    found += [f"{nb.name}: {a.name} from {node.module}" for a in node.names if _private(a.name)]
            # module._name on a koch_explore module bound in the notebook (ke._x, koch._layouts, ...)
            bound = {a.asname or a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                     for a in node.names if isinstance(node, ast.Import) and a.name.startswith("koch_explore")
                     or isinstance(node, ast.ImportFrom) and (node.module or "").startswith("koch_explore")}
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) and node.value.id in bound:
                    found.append(f"{nb.name}: {node.value.id}.{node.attr}")
    assert not found, "underscore names imported across modules:\n" + "\n".join(found)


def test_every_public_name_resolves_and_is_documented():
    import inspect

    assert len(koch_explore.__all__) >= 8
    for name in koch_explore.__all__:
        value = getattr(koch_explore, name)
        if callable(value) and not isinstance(value, type(re)):
            doc = (value.__doc__ or "").strip()
            assert doc, f"koch_explore.{name} has no docstring"
            # a dataclass without one gets "Name(field: type = default, ...)" from @dataclass: not documentation
            assert not (inspect.isclass(value) and doc.startswith(f"{value.__name__}(")), f"koch_explore.{name}: only @dataclass's signature"


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 12_000, f"README.md is {len(readme)} characters"
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", readme):
        if not target.startswith(("http://", "https://", "mailto:")):
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_every_package_folder_is_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {_module_name(p) for p in PKG.rglob("__init__.py")}
    assert folders <= listed, f"packages missing from pyproject.toml: {sorted(folders - listed)}"


LAYERS = ["core", "plotting", "data", "detect", "evidence", "culture", "vessels", "synthesis", "koch", "appendix", "cli", "widgets"]
"""The package's concepts in dependency order: each may import only those before it (README "Package layout")."""


def test_packages_import_only_the_concepts_before_them():
    def layer(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "koch_explore" and parts[1] in LAYERS else None

    wrong = []
    for m, deps in _graph(_modules()).items():
        own = layer(m)
        for d in deps:
            other = layer(d)
            if own and other and LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{m} imports {d}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_package_re_exports_a_name_that_hides_its_own_submodule():
    import importlib

    hidden = []
    for m, p in _modules().items():
        if p.name != "__init__.py" or m == "koch_explore":
            continue
        pkg = importlib.import_module(m)
        for sub in p.parent.glob("*.py"):
            name = sub.stem
            if name != "__init__" and name in vars(pkg) and not isinstance(vars(pkg)[name], type(pkg)):
                hidden.append(f"{m}.{name}")
    assert not hidden, "these names are both a module and something else (`import a.b as m` gets the wrong one): " + ", ".join(hidden)
