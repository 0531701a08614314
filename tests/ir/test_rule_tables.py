"""One rule per node kind per interpreter (``symdl.ir.rules``).

Both sides are found by introspection: the node kinds are the classes of the ``symdl.ir``
modules,
the tables are every ``Rules`` object at module level anywhere in the package. A node kind
added without a rule in some table, or a table that forgets a kind, fails
``test_every_table_covers_every_node_kind``. A kind with no rule must raise
``MissingRuleError`` naming the kind and the interpreter, at each interpreter's entry point.
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import ir
from symdl.derive import autodiff
from symdl.errors import MissingRuleError, SymdlError
from symdl.ir import naming, nodes, rewrites
from symdl.ir.evaluate import evaluate
from symdl.ir.rules import Rules
from symdl.kernels.compilable import check_compilable
from symdl.printing.to_sympy import SympyPrinter


def _node_kinds() -> list[type]:
    """Every node class defined in a module of ``symdl.ir`` (``nodes``, ``indexed``, ...)."""
    kinds = set()
    for info in pkgutil.iter_modules(ir.__path__, "symdl.ir."):
        module = importlib.import_module(info.name)
        kinds |= {c for c in vars(module).values()
                  if isinstance(c, type) and issubclass(c, nodes.Node) and c is not nodes.Node
                  and c.__module__ == info.name}
    return sorted(kinds, key=lambda c: c.__name__)


NODE_KINDS = _node_kinds()


def _tables() -> dict[str, Rules]:
    """Every ``Rules`` table defined at module level in symdl, by ``module.NAME``."""
    found: dict[int, tuple[str, Rules]] = {}
    for info in pkgutil.walk_packages(symdl.__path__, "symdl."):
        if info.name.endswith("__main__") or ".derivations" in info.name:
            continue  # __main__ runs the CLI; derivations are user content
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, Rules):
                found.setdefault(id(value), (f"{info.name}.{attr}", value))
    return dict(found.values())


TABLES = _tables()


def test_node_kinds_are_found():
    names = {c.__name__ for c in NODE_KINDS}
    assert {"Leaf", "Ones", "Zero", "Identity", "Einsum", "Map", "Add", "LogSumExp",
            "Softmax", "Solve", "Named", "AffineRead", "AffineScatter", "Take", "TakeAdjoint",
            "Max", "ArgMaxMask"} <= names


def test_the_interpreters_tables_are_found():
    assert {"symdl.derive.autodiff.VJP", "symdl.derive.autodiff.JVP",
            "symdl.ir.evaluate.EVALUATE", "symdl.printing.to_sympy.SCALAR",
            "symdl.printing.to_sympy.MATRIX", "symdl.printing.to_sympy.INDEX",
            "symdl.ir.naming.WORTH_A_NAME", "symdl.kernels.compilable.CHECK",
            "symdl.ir.nodes.REBUILD", "symdl.kernels.plan._LOWER", "symdl.kernels.plan._PLACE",
            "symdl.kernels.loops._OPERAND_READS",
            "symdl.kernels.codegen._MEMBER_CODE"} <= set(TABLES)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_covers_every_node_kind(name):
    table = TABLES[name]
    missing = sorted(c.__name__ for c in NODE_KINDS if c not in table.kinds)
    assert not missing, f"{name} ({table.interpreter}) has no rule for {missing}"


# ---------------------------------------------------------------------------------------------
# A node kind no interpreter knows


n = sp.Symbol("n", integer=True, positive=True)
A = sp.MatrixSymbol("A_rules", n, n)
LEAF = ir.leaf("A_rules", (n, n), A)


@pytest.fixture(scope="module")
def mystery_kind():
    """A test-only node kind: the identity on its argument, with no rule anywhere.

    Defined here, not at module level, and collected after this module: ``ir.Node``'s list of
    subclasses would otherwise keep listing it to every later test in the process."""

    @dataclass(frozen=True, eq=False)
    class Mystery(ir.Node):
        arg: ir.Node
        _fields: ClassVar[tuple[str, ...]] = ("arg",)

        def _compute_shape(self) -> tuple:
            return self.arg.shape

        def children(self) -> tuple[ir.Node, ...]:
            return (self.arg,)

    yield Mystery
    del Mystery
    rewrites._EXACT_MEMO.clear()  # evaluate() memoises its roots, the test's node among them
    gc.collect()


@pytest.fixture
def mystery(mystery_kind):
    return mystery_kind(LEAF)


def _assert_names_kind_and_interpreter(error: pytest.ExceptionInfo, interpreter: str) -> None:
    assert isinstance(error.value, SymdlError)
    assert error.value.kind == "Mystery"
    assert error.value.interpreter == interpreter
    assert "Mystery" in str(error.value) and interpreter in str(error.value)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_raises_the_typed_error_for_an_unknown_kind(name, mystery):
    table = TABLES[name]
    with pytest.raises(MissingRuleError) as error:
        table.rule(mystery)
    _assert_names_kind_and_interpreter(error, table.interpreter)


def test_reverse_mode_does_not_skip_an_unknown_kind(mystery):
    # It used to skip the node silently: the gradient came out as zero.
    total = ir.einsum([mystery], [(0, 1)], ())
    with pytest.raises(MissingRuleError) as error:
        autodiff.reverse(total, [LEAF])
    _assert_names_kind_and_interpreter(error, "reverse-mode differentiation")


def test_forward_mode_names_an_unknown_kind(mystery):
    # It used to raise a bare KeyError naming the class object.
    with pytest.raises(MissingRuleError) as error:
        autodiff.jacobian(mystery, LEAF)
    _assert_names_kind_and_interpreter(error, "forward-mode differentiation")


def test_evaluation_names_an_unknown_kind(mystery):
    with pytest.raises(MissingRuleError) as error:
        evaluate([mystery], {"A_rules": np.eye(2)}, {n: 2})
    # Evaluation rewrites the IR to stable forms first: that is the first interpreter to meet it.
    _assert_names_kind_and_interpreter(error, "the elementwise test of stable rewriting")


def test_printing_names_an_unknown_kind(mystery):
    with pytest.raises(MissingRuleError) as error:
        SympyPrinter().result(mystery)
    _assert_names_kind_and_interpreter(error, "IR-to-SymPy (matrices)")


def test_the_compilability_check_names_an_unknown_kind(mystery):
    with pytest.raises(MissingRuleError) as error:
        check_compilable([mystery])
    _assert_names_kind_and_interpreter(error, "the compilability check")


def test_automatic_naming_names_an_unknown_kind(mystery_kind):
    body = ir.map_(sp.Lambda(sp.Symbol("x"), sp.tanh(sp.Symbol("x"))), LEAF)
    big = ir.einsum([mystery_kind(ir.add(body, ir.einsum([body, body], [(0, 1), (1, 2)], (0, 2))))],
                    [(0, 1)], ())
    with pytest.raises(MissingRuleError) as error:
        naming.auto_name(big, set(), lambda name, shape: sp.Symbol(name))
    _assert_names_kind_and_interpreter(error, "automatic naming")


# ---------------------------------------------------------------------------------------------
# The table itself


def test_a_rule_applies_to_its_kinds_only():
    table: Rules = Rules("a test interpreter")

    @table.register(ir.Leaf, ir.Ones)
    def _leafish(node, extra):
        return ("leafish", node, extra)

    assert table(LEAF, 3) == ("leafish", LEAF, 3)
    assert table.kinds == frozenset({ir.Leaf, ir.Ones})
    with pytest.raises(MissingRuleError) as error:
        table(ir.identity(n), 3)
    assert error.value.kind == "Identity"
    assert "a test interpreter" in str(error.value)


def test_a_subclass_of_a_kind_needs_its_own_rule(mystery):
    table: Rules = Rules("a test interpreter")
    table.register(ir.Node)(lambda node: "node")
    with pytest.raises(MissingRuleError):
        table(mystery)


def test_two_rules_for_one_kind_are_refused():
    table: Rules = Rules("a test interpreter")
    table.register(ir.Leaf)(lambda node: 1)
    with pytest.raises(ValueError, match="already has a rule for Leaf"):
        table.register(ir.Leaf)(lambda node: 2)
