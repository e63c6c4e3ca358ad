"""No import cycles in the installed package: dependencies point one way.

The graph is read from the parsed import statements of ``prompt_diffusion/`` and of the reference
trainers installed inside it (``trainers/`` as ``prompt_diffusion.trainers``), so an import inside
a function counts as much as one at the top. An edge goes to the module named; ``from pkg import
name`` goes to ``pkg.name`` when that is a module, else to ``pkg`` itself (its ``__init__``): a
submodule that imports a name from its own package's ``__init__`` closes a cycle with it.
"""
import ast
from pathlib import Path
from typing import Dict, List, Mapping, Set

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = {"prompt_diffusion": ROOT / "prompt_diffusion", "prompt_diffusion.trainers": ROOT / "trainers"}


def module_files(sources: Mapping[str, Path]) -> Dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file below each source folder (package name -> folder)."""
    modules = {}
    for package, folder in sources.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            modules[".".join([package] + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    return modules


def import_graph(modules: Mapping[str, Path]) -> Dict[str, Set[str]]:
    """Module -> the modules of ``modules`` it imports, anywhere in its file (relative imports resolved)."""
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            graph[name].update(target for target in targets if target in modules)
    return graph


def cycles(graph: Mapping[str, Set[str]]) -> List[List[str]]:
    """The groups of modules that import one another, directly or through others (sorted)."""
    def reachable(start: str) -> Set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return seen

    reach = {name: reachable(name) for name in graph}
    groups = {frozenset(other for other in reach[name] if name in reach[other])
              for name in graph if name in reach[name]}
    return sorted(sorted(group) for group in groups)


def test_the_cycle_finder_sees_cycles_of_function_level_and_package_imports(tmp_path):
    """A cycle made only of imports inside functions (absolute one way, relative the other), and a
    submodule importing a name from its package's ``__init__`` that imports it; a one-way import is none."""
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b\n",
        "pkg/b.py": "def g():\n    from . import a\n",
        "pkg/d.py": "import pkg.a\nfrom pkg.sub.c import C\n",
        "pkg/sub/__init__.py": "from pkg.sub.c import C\n",
        "pkg/sub/c.py": "class C:\n    def h(self):\n        from pkg.sub import helper\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    graph = import_graph(module_files({"pkg": tmp_path / "pkg"}))
    assert graph["pkg.d"] == {"pkg.a", "pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub", "pkg.sub.c"]]


def test_the_graph_reads_the_package_and_its_function_level_imports():
    graph = import_graph(module_files(INSTALLED))
    assert {"prompt_diffusion.adapters.deep", "prompt_diffusion.diffusion.samplers",
            "prompt_diffusion.trainers.coop"} <= set(graph)
    # config reads the adapters' defaults inside its functions: the edge is there, one way
    assert "prompt_diffusion.adapters.base" in graph["prompt_diffusion.config"]


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph(module_files(INSTALLED)))
    assert not found, "modules that import one another (move what both need below them):\n" + "\n".join(
        " <-> ".join(group) for group in found)
