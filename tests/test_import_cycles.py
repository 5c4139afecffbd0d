"""No import cycles inside clight/: every module imports only what sits below it.

What counts as an import: every ``import`` and ``from ... import`` statement that can run,
at module level *and inside functions*; only those under ``if TYPE_CHECKING:`` are left out
(they never run). Function-level imports count because in clight they are there to make
``import clight`` and ``clight --help`` cheap, not to break cycles: an import moved into a
function to dodge a cycle still ties both modules to each other (each needs the other to work,
neither can be understood or tested alone), and the cycle comes back the day the import moves to
the top. The two cycles this test was written against (the CLI and ``clight compare``, the run
folder and its checkpoints) both went through function-level imports.

An import's targets are the module it names, every package on the way to it (importing
``clight.models.module`` runs ``clight/models/__init__.py`` first; the importer's own packages
are left out, Python has started them before it), and, for a name a package imports lazily
(``_LAZY`` of ``clight._lazy``), the module that defines the name. Imports by string
(``importlib.import_module``) are not seen; clight has none.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

Graph = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of the import}


def module_files(root: Path, package: str) -> dict[str, Path]:
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def lazy_names(tree: ast.Module) -> dict[str, str]:
    """A package's ``_LAZY`` map (public name -> defining module), evaluated without importing it."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return eval(compile(ast.Expression(node.value), "_LAZY", "eval"), {"__builtins__": {}, "dict": dict})
    return {}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def run_time_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for node in child.orelse:
                found += run_time_imports(ast.Module(body=[node], type_ignores=[]))
        elif isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        else:
            found += run_time_imports(child)
    return found


def _packages_to(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph(root: Path, package: str) -> Graph:
    files = module_files(root, package)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    lazy = {name: lazy_names(trees[name]) for name in packages}
    graph: Graph = {}
    for importer, tree in trees.items():
        own_packages = set(_packages_to(importer))
        edges = graph.setdefault(importer, {})
        for node in run_time_imports(tree):
            if isinstance(node, ast.Import):
                named, explicit = [a.name for a in node.names], []
            else:
                base = node.module or ""
                if node.level:  # relative: from the importer's package upwards
                    anchor = importer.split(".") if importer in packages else importer.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                named, explicit = [base], []
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in files:  # a submodule: imported on its own, even from a package still starting
                        explicit.append(full)
                    else:  # a name read from the module (or package) itself
                        explicit.append(base)
                        if alias.name in lazy.get(base, {}):
                            explicit.append(lazy[base][alias.name])
            targets = {p for n in named for p in _packages_to(n) if p not in own_packages} | set(explicit)
            for target in targets & files.keys():
                if target != importer:
                    edges.setdefault(target, f"{files[importer].relative_to(root)}:{node.lineno}")
    return graph


def find_cycle(graph: Graph) -> Optional[list[str]]:
    """One import cycle (its modules in import order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> Optional[list[str]]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def describe(cycle: list[str], graph: Graph) -> str:
    return "\n".join(f"  {a} -> {b}   ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_clight_has_no_import_cycle():
    graph = import_graph(ROOT, "clight")
    assert len(graph) > 100 and "clight.runner.errors" in graph["clight.runner.checkpoints"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle inside clight/ (move the shared piece below both):\n" + describe(cycle, graph)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_check_finds_cycles_through_function_level_relative_and_lazy_imports(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "_LAZY = {**dict.fromkeys(['Runner'], 'pkg.sub.runner')}\n",
            "pkg/cli.py": "def main():\n    from pkg.sub import helpers\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/helpers.py": "from .runner import run\n",
            "pkg/sub/runner.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import cli\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert find_cycle(graph) is None  # an import under TYPE_CHECKING never runs

    (tmp_path / "pkg/sub/runner.py").write_text("def run():\n    from pkg.cli import main\n")
    assert find_cycle(graph := import_graph(tmp_path, "pkg")) == ["pkg.cli", "pkg.sub.helpers", "pkg.sub.runner", "pkg.cli"]
    assert "pkg/sub/runner.py:2" in describe(find_cycle(graph), graph)

    # a name the package imports lazily leads to the module that defines it
    (tmp_path / "pkg/sub/runner.py").write_text("from pkg.sub.helpers import x\n")
    (tmp_path / "pkg/sub/helpers.py").write_text("x = 1\ndef f():\n    from pkg import Runner\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.sub.helpers", "pkg.sub.runner", "pkg.sub.helpers"]
