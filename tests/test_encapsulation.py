"""The public faces keep their insides: no code outside ``Derivation``, ``Kernel`` and
``TrainingStep`` reads or writes their private members (LaTeX, training and checks go
through public accessors), and IR-to-IR rewrites live with the IR.

Read from the source with ``ast``: an attribute ``x._name`` where ``_name`` is a private
member one of those classes defines (a ``self._name`` it assigns or a ``_name`` method) and
``x`` is not the class's own ``self``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"Derivation": "symdl/derivation.py", "Kernel": "symdl/kernels/kernel.py",
           "TrainingStep": "symdl/training.py"}
SCANNED = ["symdl", "derivations", "benchmarks", "tests"]
FAULT_INJECTION = {("tests/verify/test_check.py", "_module")}
"""Where a test replaces a kernel's compiled module with a wrong one on purpose (a check
that must catch it): the one write no public API should offer."""


def _private_members(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    members = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef) and _private(node.name):
            members.add(node.name)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "self" and _private(node.attr)):
            members.add(node.attr)
    return members


def _private(name: str) -> bool:
    # Not dunders, nor the protocols named like _repr_latex_ (IPython calls them).
    return name.startswith("_") and not name.endswith("_")


def _outside_accesses(members: dict[str, set[str]]) -> list[str]:
    """``file:line: x._name`` for each access to a private member from outside its class."""
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            inside = {id(n) for cls, file in CLASSES.items() if file == rel
                      for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls
                      for n in ast.walk(c)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute) or id(node) in inside:
                    continue
                owners = [cls for cls, names in members.items() if node.attr in names]
                receiver = ast.unparse(node.value)
                if owners and receiver not in ("self", "cls") and (rel, node.attr) not in \
                        FAULT_INJECTION:
                    found.append(f"{rel}:{node.lineno}: {receiver}.{node.attr} "
                                 f"({'/'.join(owners)})")
    return found


def test_no_private_member_is_touched_from_outside_its_class():
    members = {cls: _private_members(ROOT / file, cls) for cls, file in CLASSES.items()}
    # Names private to these classes that other classes happen to use for their own members
    # (a SymPy printer's _print) are not these classes' business.
    generic = {"_print"}
    members = {cls: names - generic for cls, names in members.items()}
    assert {"_adjoints", "_hessians", "_ensure_gradients"} <= members["Derivation"]
    assert {"_outputs", "_module", "_source"} <= members["Kernel"]
    assert _outside_accesses(members) == []


def test_ir_rewrites_live_with_the_ir():
    """``squeeze`` (drop size-1 axes: IR to IR) is called by the kernel path: it is defined in
    ``symdl/ir``, not in a printing module."""
    defined = {}
    for path in (ROOT / "symdl").rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name == "squeeze":
                defined[path.relative_to(ROOT).as_posix()] = node.lineno
    assert list(defined) == ["symdl/ir/shape.py"]
