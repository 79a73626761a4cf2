"""The package's layering, read from its source: torchgpipe stays in the gpipe backend, no module
imports itself back through others, no module is over 300 lines."""
import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "edgesplit"
GPIPE_BACKEND = {"edgesplit.backends.gpipe", "edgesplit.backends.gpipe_recompute"}


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path) -> Set[str]:
    """Every module an import statement of the file names, wherever it stands (type-checking
    blocks and functions too), relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            found |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return found


def test_torchgpipe_is_imported_by_the_gpipe_backend_only() -> None:
    users = {name for name, path in _modules().items()
             if any(m.split(".")[0] == "torchgpipe" for m in _imports(name, path))}
    assert users and users <= GPIPE_BACKEND, sorted(users - GPIPE_BACKEND)


def test_no_import_cycle_between_modules() -> None:
    modules = _modules()
    graph = {name: sorted(m for m in _imports(name, path) if m in modules and m != name
                          and not name.startswith(m + "."))  # a package's own __init__ is no cycle
             for name, path in modules.items()}
    state: Dict[str, int] = {}  # 1: on the path, 2: done
    cycles: List[List[str]] = []

    def visit(name: str, path: List[str]) -> None:
        state[name] = 1
        for m in graph[name]:
            if state.get(m) == 1:
                cycles.append(path[path.index(m):] + [m])
            elif m not in state:
                visit(m, path + [m])
        state[name] = 2
    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_no_module_is_over_300_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 300}
    assert not long, long
