"""The frontend as a unit (``symdl.define.translate``): which SymPy forms become which IR
nodes, and the typed error of each form it refuses.

The expected nodes are written by hand from the meaning of each form (``X*W`` is the product
``Σ_j X[i, j] W[j, l]``); nodes are interned, so ``is`` compares structure exactly.
"""

from __future__ import annotations

import pytest
import sympy as sp
from sympy.matrices.expressions.diagonal import DiagMatrix

from symdl import ir
from symdl.define.translate import Translator, dimension_symbols, translate_matrix_or_scalar
from symdl.define.vocabulary import LogSumExp, Softmax, Total
from symdl.errors import DefinitionError, ShapeMismatchError, UnsupportedError

n, d, k = sp.symbols("n d k", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
B = sp.MatrixSymbol("B", n, d)
W = sp.MatrixSymbol("W", d, k)
S = sp.MatrixSymbol("S", n, n)
w = sp.MatrixSymbol("w", d, 1)
v = sp.MatrixSymbol("v", n, 1)
Q = sp.IndexedBase("Q", shape=(n, d))
c = sp.Symbol("c")
i, j = sp.symbols("i j", integer=True)

LX, LB, LW, LS = (ir.leaf(str(m.name), m.shape, m) for m in (X, B, W, S))
Lw, Lv = ir.leaf("w", w.shape, w), ir.leaf("v", v.shape, v)


def _translator() -> Translator:
    return Translator({n, d, k})


def _lambda(body) -> sp.Lambda:
    return ir.canonical_lambda(sp.Lambda(c, body(c)))


# ---------------------------------------------------------------------------------------------
# Matrix expressions

MATRIX_CASES = {
    "symbol": (X, LX),
    "product": (X * W, ir.einsum([LX, LW], [(0, 1), (1, 2)], (0, 2))),
    "scaled product": (2 * X * W, ir.einsum([LX, LW], [(0, 1), (1, 2)], (0, 2), 2)),
    "sum": (X + B, ir.add(LB, LX)),  # in SymPy's order of the terms
    "transpose": (X.T, ir.einsum([LX], [(0, 1)], (1, 0))),
    "hadamard product": (sp.HadamardProduct(X, B), ir.hadamard(LX, LB)),
    "hadamard power": (sp.HadamardPower(X, 2), ir.map_(_lambda(lambda t: t**2), LX)),
    "applyfunc": (X.applyfunc(sp.tanh), ir.map_(_lambda(sp.tanh), LX)),
    "ones": (sp.OneMatrix(n, d), ir.ones((n, d))),
    "zeros": (sp.ZeroMatrix(n, d), ir.zero((n, d))),
    "identity": (sp.Identity(n), ir.identity(n)),
    "inverse": (S.I, ir.solve(LS, ir.identity(n))),
    "inverse times": (S.I * B, ir.solve(LS, LB)),  # a solve, never the inverse itself
    "power": (S**2, ir.einsum([LS, LS], [(0, 1), (1, 2)], (0, 2))),
    "softmax": (Softmax(X, 1), ir.softmax(LX, 1)),
    "logsumexp": (LogSumExp(X, 0), ir.logsumexp(LX, 0)),
    "diagonal": (DiagMatrix(v), ir.einsum([Lv, ir.identity(n)], [(0, 2), (0, 1)], (0, 1))),
}


@pytest.mark.parametrize("case", sorted(MATRIX_CASES))
def test_matrix_forms_become_their_nodes(case):
    expr, expected = MATRIX_CASES[case]
    assert _translator().matrix(expr) is expected


def test_a_named_intermediate_is_its_node_not_a_leaf():
    Z = sp.MatrixSymbol("Z", n, k)
    step = ir.named("Z", ir.einsum([LX, LW], [(0, 1), (1, 2)], (0, 2)), Z)
    translator = Translator({n, d, k}, named={Z: step})
    assert translator.matrix(Z.applyfunc(sp.exp)) is ir.map_(_lambda(sp.exp), step)
    assert "Z" not in translator.leaves


def test_leaves_are_shared_and_recorded_by_name():
    translator = _translator()
    node = translator.matrix(X * W + X * W)
    assert node is ir.einsum([LX, LW], [(0, 1), (1, 2)], (0, 2), 2)
    assert translator.leaves == {"X": LX, "W": LW}


# ---------------------------------------------------------------------------------------------
# Scalars and index notation

INDEX_CASES = {
    "matrix-vector sum": (sp.Sum(X[i, j] * w[j, 0], (j, 0, d - 1)),
                          ir.einsum([LX, Lw], [(0, 1), (1, 2)], (0,)), (i,)),
    "double sum": (sp.Sum(X[i, j], (i, 0, n - 1), (j, 0, d - 1)),
                   ir.einsum([LX], [(0, 1)], ()), ()),
    "function of entries": (sp.exp(X[i, j]), ir.map_(_lambda(sp.exp), LX), (i, j)),
    "entries with other index names": (X[j, i], LX, (j, i)),
    "indexed base": (Q[i, j], ir.leaf("Q", (n, d), Q), (i, j)),
    "scalar symbol": (c, ir.leaf("c", (), c), ()),
    "constant": (3 / n, ir.scalar(3 / n), ()),
    "trace": (sp.Trace(S), ir.einsum([LS], [(0, 0)], ()), ()),
    "total": (Total(X), ir.einsum([LX], [(0, 1)], ()), ()),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_index_notation_becomes_its_node(case):
    expr, expected, indices = INDEX_CASES[case]
    assert _translator().indexed(expr) == (expected, indices)


def test_a_kink_is_one_map_of_its_array_valued_parts():
    node, indices = _translator().indexed(sp.Max(X[i, j], 0))
    assert isinstance(node, ir.Map) and node.args == (LX,) and indices == (i, j)
    assert [node.fn(value) for value in (-2, 0, 3)] == [0, 0, 3]


def test_a_kronecker_delta_over_ranged_indices_is_the_identity():
    a, b = sp.Idx("a", n), sp.Idx("b", n)
    assert _translator().indexed(sp.KroneckerDelta(a, b)) == (ir.identity(n), (a, b))


def test_a_power_with_a_symbol_exponent_reads_the_exponent_as_an_argument():
    node, indices = _translator().indexed(X[i, j] ** c)
    assert isinstance(node, ir.Map) and indices == (i, j)
    assert node.args[0] is LX and len(node.fn.variables) == 2
    assert ir.leaf("c", (), c) in ir.topological_order([node.args[1]])


def test_translate_matrix_or_scalar_writes_the_stable_form():
    # log(1 + exp(x)) overflows for x > 709; its stable spelling is softplus.
    expr = X.applyfunc(lambda t: sp.log(1 + sp.exp(t)))
    assert _translator().matrix(expr) is ir.map_(_lambda(lambda t: sp.log(1 + sp.exp(t))), LX)
    node = translate_matrix_or_scalar(_translator(), expr)
    assert isinstance(node, ir.Map) and node.args == (LX,)
    assert node.fn.expr.func.__name__ == "softplus"


def test_dimension_symbols_come_from_shapes_and_ranges():
    a = sp.Idx("a", k)
    assert dimension_symbols([X * W, Q[i, j], sp.Sum(c, (a, 0, k - 1))]) == {n, d, k}


# ---------------------------------------------------------------------------------------------
# Typed errors

ERRORS = {
    "explicit matrix": (lambda t: t.matrix(sp.Matrix([[1, 2]])), UnsupportedError,
                        "MatrixSymbol with symbolic dimensions"),
    "fractional matrix power": (lambda t: t.matrix(sp.MatPow(S, sp.Rational(1, 2))),
                                UnsupportedError, "only positive integer powers"),
    "symbolic hadamard exponent": (lambda t: t.matrix(sp.HadamardPower(X, c)),
                                   UnsupportedError, "must be a constant"),
    "one name two shapes": (lambda t: (t.matrix(X), t.matrix(sp.MatrixSymbol("X", d, n))),
                            ShapeMismatchError, "used with two shapes"),
    "free indices": (lambda t: t.scalar(X[i, j]), DefinitionError, "free indices"),
    "matrix as scalar": (lambda t: t.scalar(X), DefinitionError, "where a scalar is expected"),
    "infinite constant": (lambda t: t.scalar(sp.oo), DefinitionError, "not finite"),
    # A Sum from 1 is shifted to 0 (tests/define/test_positions.py); from another index, not.
    "sum from another index": (lambda t: t.scalar(sp.Sum(w[j, 0], (j, i, d - 1))),
                               UnsupportedError, "lower limit of a Sum must be a number"),
    "sum over the wrong range": (lambda t: t.scalar(sp.Sum(w[j, 0], (j, 0, n - 1))),
                                 ShapeMismatchError, "runs to n - 1"),
    # Shifted indices are reads (tests/define/test_positions.py), over a known range only.
    "shifted free index": (lambda t: t.indexed(X[i + 1, j]), DefinitionError,
                           "range of the index i in X"),
    "indexed base without shape": (lambda t: t.indexed(sp.IndexedBase("R")[i, j]),
                                   DefinitionError, "give IndexedBase a shape"),
    "delta without range": (lambda t: t.indexed(sp.KroneckerDelta(i, j)), DefinitionError,
                            "range of its indices is unknown"),
    "index not affine": (lambda t: t.indexed(X[i**2, j]), UnsupportedError, "not affine"),
    "unsupported function": (lambda t: t.scalar(sp.gamma(c)), UnsupportedError,
                             "gamma"),
    "unsupported object": (lambda t: t.scalar(sp.Integral(c, (sp.Symbol("u"), 0, 1))),
                           UnsupportedError, "Integral"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_refused_forms_raise_typed_errors(case):
    call, error, message = ERRORS[case]
    with pytest.raises(error, match=message):
        call(_translator())
