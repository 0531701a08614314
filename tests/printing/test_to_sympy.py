"""IR -> SymPy as a unit (``symdl.printing.to_sympy``): each node kind and each recognised
pattern, on IR built by hand.

Each case checks the printed form (the matrix algebra a reader expects: ``X.T*G``, not a
``Sum`` of entries) and its value: the printed SymPy, run by ``sympy.lambdify`` (SymPy's own
code path), against the same quantity written in NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from symdl import ir
from symdl.printing.to_sympy import IndexForm, SympyPrinter

n, d, k = sp.symbols("n d k", integer=True, positive=True)
SIZES = {n: 3, d: 2, k: 4}
x = sp.Symbol("x")
RESERVED = {"n", "d", "k"}  # index names must not be dimension names (as in a Derivation)


def _leaf(name: str, *dims: sp.Expr, indexed: bool = False) -> ir.Leaf:
    symbol = (sp.IndexedBase(name, shape=dims) if indexed or len(dims) != 2
              else sp.MatrixSymbol(name, *dims))
    return ir.leaf(name, dims, symbol)


X, G, A, B = _leaf("X", n, d), _leaf("G", n, k), _leaf("A", n, d), _leaf("B", n, d)
S, P, Y = _leaf("S", n, n), _leaf("P", n, k), _leaf("Y", n, k)
s, w, W = _leaf("s", n, 1), _leaf("w", d, 1), _leaf("W", d, k)
T = _leaf("T", n, d, k)
Q = _leaf("Q", n, d, indexed=True)


def _values(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = {leaf.name: rng.standard_normal(tuple(SIZES[dim] if dim in SIZES else int(dim)
                                                   for dim in leaf.shape))
              for leaf in (X, G, A, B, S, P, Y, s, w, W, T, Q)}
    values["S"] = values["S"] * 0.3 + 3 * np.eye(3)  # well conditioned
    return values


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _lse(z, axis):
    return np.log(np.exp(z).sum(axis=axis, keepdims=True))


# id -> (node, printed form, NumPy value of the node from the leaf values)
CASES = {
    "Xt-G": (ir.einsum([X, G], [(0, 1), (0, 2)], (1, 2)), "X.T*G", lambda v: v["X"].T @ v["G"]),
    "Xt-diag-X": (ir.einsum([X, s, X], [(0, 1), (0, 9), (0, 2)], (1, 2)),
                  "X.T*DiagMatrix(s)*X", lambda v: v["X"].T @ np.diag(v["s"][:, 0]) @ v["X"]),
    "hadamard": (ir.einsum([A, B], [(0, 1), (0, 1)], (0, 1)), "HadamardProduct(A, B)",
                 lambda v: v["A"] * v["B"]),
    "row-sums": (ir.einsum([A, ir.ones((1,))], [(0, 1), (2,)], (0, 2)), "A*1",
                 lambda v: v["A"].sum(axis=1, keepdims=True)),
    "outer-squeezed": (ir.einsum([w, w], [(0, 1), (2, 3)], (0, 1, 2, 3)), "w*w.T",
                       lambda v: v["w"] @ v["w"].T),
    "total": (ir.einsum([A], [(0, 1)], ()), "Total(A)", lambda v: v["A"].sum()),
    "trace": (ir.einsum([S], [(0, 0)], ()), "Trace(S)",
              lambda v: np.trace(v["S"])),
    "map-tanh": (ir.map_(sp.Lambda(x, sp.tanh(x)), A), "tanh(A)", lambda v: np.tanh(v["A"])),
    "map-polynomial": (ir.map_(sp.Lambda(x, 1 - x**2), A), "-HadamardPower(A, 2) + 1",
                       lambda v: 1 - v["A"] ** 2),
    "map-of-scalar": (ir.map_(sp.Lambda(x, sp.exp(x)), ir.einsum([A], [(0, 1)], ())),
                      "exp(Total(A))", lambda v: np.exp(v["A"].sum())),
    "add-common-factor": (ir.add(ir.scale(P, 1 / n), ir.scale(Y, -1 / n)), "1/n*(P - Y)",
                          lambda v: (v["P"] - v["Y"]) / 3),
    "logsumexp": (ir.logsumexp(A, 1), "LogSumExp(A, 1)", lambda v: _lse(v["A"], 1)),
    "softmax": (ir.softmax(A, 0), "Softmax(A, 0)", lambda v: _softmax(v["A"], 0)),
    "inverse": (ir.solve(S, ir.identity(n)), "S**(-1)", lambda v: np.linalg.inv(v["S"])),
    "solve": (ir.solve(S, A), "S**(-1)*A", lambda v: np.linalg.solve(v["S"], v["A"])),
    "ones": (ir.ones((n, d)), "1", lambda v: np.ones((3, 2))),
    "zero": (ir.zero((n, d)), "0", lambda v: np.zeros((3, 2))),
    "identity": (ir.identity(n), "I", lambda v: np.eye(3)),
    "leaf": (A, "A", lambda v: v["A"]),
}


def _run(result: sp.Basic, values: dict[str, np.ndarray]) -> np.ndarray:
    """The printed result computed by SymPy's ``lambdify`` (dimension symbols bound)."""
    args = sorted(result.free_symbols, key=str)
    given = [SIZES[a] if a in SIZES else values[str(getattr(a, "name", a))] for a in args]
    return np.asarray(sp.lambdify(args, result, "numpy")(*given), dtype=float)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_and_pattern_prints_as_matrix_algebra(case):
    node, printed, numpy_value = CASES[case]
    result = SympyPrinter().result(node)
    assert str(result) == printed
    values = _values()
    want = np.asarray(numpy_value(values), dtype=float)
    np.testing.assert_allclose(_run(result, values).reshape(want.shape), want, rtol=1e-12,
                               atol=1e-12)


def test_a_scalar_zero_prints_as_zero():
    assert SympyPrinter().result(ir.zero(())) == 0


def test_a_named_step_prints_inline_or_by_name():
    Z = sp.MatrixSymbol("Z", n, k)
    step = ir.named("Z", ir.einsum([X, W], [(0, 1), (1, 2)], (0, 2)), Z)
    node = ir.map_(sp.Lambda(x, sp.tanh(x)), step)
    assert str(SympyPrinter().result(node)) == "tanh(X*W)"
    assert str(SympyPrinter(inline_named=False).result(node)) == "tanh(Z)"
    # An alias prints the node by the alias's name even when it is not itself named.
    alias = ir.named("H", node, sp.MatrixSymbol("H", n, k))
    printer = SympyPrinter(inline_named=False, aliases={id(node): alias})
    assert str(printer.result(ir.scale(node, 2))) == "2*H"


def test_a_tensor_of_rank_three_prints_in_index_notation():
    node = ir.einsum([T, W], [(0, 1, 2), (1, 3)], (0, 2, 3))  # n x k x k: no matrix form
    result = SympyPrinter(reserved=RESERVED).result(node)
    assert isinstance(result, IndexForm)
    assert len(result.indices) == 3 and result.shape == (n, k, k)
    assert result.expr.has(sp.Sum)
    values = _values()
    got = result.lambdify([T.symbol, W.symbol])(values["T"], values["W"])
    np.testing.assert_allclose(got, np.einsum("idk,dl->ikl", values["T"], values["W"]),
                               rtol=1e-12)


def test_an_indexed_base_stays_in_index_notation():
    result = SympyPrinter().result(ir.einsum([Q], [(0, 1)], (1, 0)))
    assert isinstance(result, IndexForm)
    i, j = result.indices
    assert result.expr == Q.symbol[j, i]
    values = _values()
    got = result.lambdify([Q.symbol])(values["Q"])
    np.testing.assert_array_equal(got, values["Q"].T)


def test_index_notation_of_every_kind():
    # The index rules, entry by entry: each printed entry evaluated against NumPy.
    values = _values()
    i, j = sp.symbols("i j", integer=True, nonnegative=True)
    printer = SympyPrinter(reserved=RESERVED | {"i", "j"})  # summed indices get other names
    for case in sorted(CASES):
        node, _, numpy_value = CASES[case]
        if node.rank != 2:
            continue
        entry = printer.index(node, (i, j))
        want = np.asarray(numpy_value(values), dtype=float)
        form = IndexForm((i, j), node.shape, entry)
        leaves = [leaf.symbol for leaf in ir.topological_order([node])
                  if isinstance(leaf, ir.Leaf)]
        arrays = [values[str(getattr(a, "name", a))] for a in leaves]
        got = form.lambdify([*leaves, n, d, k])(*arrays, 3, 2, 4)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=case)


def test_a_solve_with_a_tensor_right_hand_side_prints_in_index_notation():
    # A Hessian block through an inverse solves for a rank-4 tangent: its entries are
    # Σ_k (S^{-1})[i, k] T[k, r, s], checked against numpy.linalg.solve.
    form = SympyPrinter(reserved=RESERVED).result(ir.solve(S, T))
    assert isinstance(form, IndexForm)
    values = _values(3)
    values["S"] = values["S"] + 3 * np.eye(3)
    got = form.lambdify([S.symbol, T.symbol, n, d, k])(values["S"], values["T"], 3, 2, 4)
    want = np.linalg.solve(values["S"], values["T"].reshape(3, -1)).reshape(3, 2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_scalar_and_matrix_refuse_the_wrong_rank():
    with pytest.raises(ValueError):
        SympyPrinter().scalar(A)
    with pytest.raises(ValueError):
        SympyPrinter().matrix(ir.einsum([A], [(0, 1)], ()))
