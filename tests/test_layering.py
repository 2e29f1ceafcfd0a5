"""The package layering, read from the sources: dataset_engine ← dataprep ← trainer_bridge.

Every import counts, at module level or inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("dataset_engine", "dataprep", "trainer_bridge")  # bottom to top
# the third-party packages the bottom layer may use (formats and datasets, no tokenizers)
DATASET_ENGINE_THIRD_PARTY = {"numpy", "torch", "megatron"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names; relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name}
            for name, path in modules.items()}


def test_the_sources_are_found():
    modules = _modules()
    assert {"dataset_engine.idxmap", "dataprep.cli", "trainer_bridge.train"} <= set(modules)
    assert _graph()["dataprep.pretrain.run"], "the import scan found no imports: the test would prove nothing"


@pytest.mark.parametrize("layer", LAYERS)
def test_no_package_imports_a_package_above_it(layer):
    above = LAYERS[LAYERS.index(layer) + 1:]
    bad = sorted(f"{name} imports {target}" for name, path in _modules().items() if name.split(".")[0] == layer
                 for target in _imports(name, path) if target.split(".")[0] in above)
    assert not bad, "\n".join(bad)


def test_dataset_engine_uses_only_numpy_torch_and_megatron():
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = sorted(f"{name} imports {target}" for name, path in _modules().items()
                 if name.startswith("dataset_engine")
                 for target in _imports(name, path)
                 if target.split(".")[0] not in stdlib | DATASET_ENGINE_THIRD_PARTY | {"dataset_engine"})
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package's own __init__ importing its modules is not a cycle with them
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_a_violation(tmp_path):
    """The scan resolves the import forms the checks rely on (a check that cannot fail proves nothing)."""
    fake = tmp_path / "dataset_engine" / "bad.py"
    fake.parent.mkdir()
    fake.write_text("from dataprep.io import sources\nimport trainer_bridge.train\n"
                    "def f():\n    from ..dataprep import cli\n")
    found = _imports("dataset_engine.bad", fake)
    assert {"dataprep.io.sources", "trainer_bridge.train", "dataprep.cli"} <= found
