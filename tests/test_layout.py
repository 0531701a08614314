"""The package layout by stage: no import cycles, no import from a later stage.

The import graph is read from the source with ``ast`` (every ``import`` statement, at module
level or inside a function), so the test needs nothing beyond the standard library. Imports
under ``if TYPE_CHECKING:`` are annotations only and are not part of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "symdl"

# Each module's stage: its subpackage, or its own name for the top-level modules. A module
# may import from its own stage or an earlier one (see the layout in symdl/__init__.py).
STAGES = ["errors", "primitives", "ir", "define", "derive", "printing", "kernels",
          "derivation", "training", "scale", "bridges", "verify", "report", "catalog", "cli",
          "__main__", "__init__"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    if parts[1] == "derivations":
        return "derivations"
    return parts[1]


def _type_checking_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """The symdl modules one file imports (``from symdl import ir`` counts as ``symdl.ir``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "symdl")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "symdl":
                    continue
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _is_module(candidate) else base)
            visit(child)

    visit(tree)
    return {m for m in found if m != module_name(path)}


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return ((PACKAGE / relative).with_suffix(".py").exists()
            or (PACKAGE / relative / "__init__.py").exists())


def graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "derivations" not in p.parts]
    return {module_name(p): imports_of(p) for p in files}


def test_every_module_has_a_stage():
    unknown = sorted(m for m in graph() if stage_of(m) not in STAGES)
    assert unknown == [], f"modules outside the declared stages: {unknown}"


def test_no_module_imports_from_a_later_stage():
    upward = []
    for module, imported in graph().items():
        rank = STAGES.index(stage_of(module))
        for target in imported:
            stage = stage_of(target)
            if stage == "derivations":
                continue  # the shipped derivations are data the catalog loads by name
            if stage != "__init__" and STAGES.index(stage) > rank:
                upward.append(f"{module} -> {target}")
            public_face = stage == "__init__" and stage_of(module) != "__init__"
            if public_face and rank < STAGES.index("report"):
                upward.append(f"{module} -> {target} (the package's public face)")
    assert upward == [], "imports from a later stage:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if target not in edges:
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                walk(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("from symdl import ir\n", {"symdl.ir"}),
    ("from symdl.kernels.plan import plan\n", {"symdl.kernels.plan"}),
    ("def f():\n    from symdl.verify import check\n", {"symdl.verify.check"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from symdl.derivation import D\n",
     set()),
])
def test_the_graph_reader_sees_every_import(tmp_path, source, expected, monkeypatch):
    """The reader itself: module-level, package-relative and function-local imports count;
    annotations under TYPE_CHECKING do not."""
    target = PACKAGE / "ir" / "nodes.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert imports_of(target) == expected
