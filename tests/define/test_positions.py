"""Computed positions from plain SymPy (``symdl.define.positions``): affine indices become
windowed reads, integer index arrays gathers, and every other index a typed error.

The expected nodes are written by hand from the meaning of each form (``X[b, t + k]`` over
``t < T - K + 1``, ``k < K`` is the read of ``X`` at ``(b, t + k)`` over ``(b, t, k)``); nodes
are interned, so ``is`` compares structure exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from symdl import ir
from symdl.define.translate import Translator
from symdl.errors import ShapeMismatchError, UnsupportedError
from symdl.ir import AffineMap
from symdl.ir.evaluate import evaluate

n, T, K, V, D = sp.symbols("n T K V D", integer=True, positive=True)
b, t, k, j = sp.symbols("b t k j", integer=True)
X = sp.IndexedBase("X", shape=(n, T))
W = sp.IndexedBase("W", shape=(K,))
E = sp.IndexedBase("E", shape=(V, D))
idx = sp.IndexedBase("idx", shape=(n,), integer=True)
M = sp.MatrixSymbol("M", n, T)
LX, LW, LE = ir.leaf("X", (n, T), X), ir.leaf("W", (K,), W), ir.leaf("E", (V, D), E)
Lidx, LM = ir.leaf("idx", (n,), idx), ir.leaf("M", (n, T), M)


def _translator() -> Translator:
    return Translator({n, T, K, V, D})


def _window(offset=0, stride=1, dilation=1) -> ir.Node:
    """X[b, stride*t + dilation*k + offset] over (b, k, t), k < K, t < T - K + 1 (the axes:
    the plain index, then the symbols of the affine index by name)."""
    return ir.affine_read(LX, (n, K, T - K + 1), (AffineMap.of([1, 0, 0]),
                                                   AffineMap.of([0, dilation, stride], offset)))


def _conv(read: ir.Node) -> ir.Node:
    return ir.einsum([LW, read], [(1,), (0, 1, 2)], ())


CASES = {
    "window": (W[k] * X[b, t + k], _conv(_window())),
    "stride, dilation, padding": (W[k] * X[b, 2 * t + 3 * k - 1], _conv(_window(-1, 2, 3))),
    "integer dimension as a coefficient": (
        W[k] * X[b, K * t + k],
        _conv(ir.affine_read(LX, (n, K, T - K + 1), (AffineMap.of([1, 0, 0]),
                                                     AffineMap.of([0, 1, K]))))),
    "matrix entries too": (
        W[k] * M[b, t + k],
        _conv(ir.affine_read(LM, (n, K, T - K + 1), (AffineMap.of([1, 0, 0]),
                                                     AffineMap.of([0, 1, 1]))))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_affine_indices_are_windowed_reads(case):
    body, expected = CASES[case]
    expr = sp.Sum(body, (k, 0, K - 1), (t, 0, T - K), (b, 0, n - 1))
    assert _translator().scalar(expr) is expected


def test_a_fixed_entry_and_a_flip_are_reads():
    # X[b, 0] (the first step) and X[b, T - 1 - t] (time reversed).
    first = _translator().scalar(sp.Sum(X[b, 0], (b, 0, n - 1)))
    assert first is ir.einsum([ir.affine_read(LX, (n,), (AffineMap.of([1]),
                                                         AffineMap.of([0])))], [(0,)], ())
    node, indices = _translator().indexed(sp.Sum(X[b, T - 1 - t], (t, 0, T - 1)))
    assert indices == (b,)
    flip = ir.affine_read(LX, (n, T), (AffineMap.of([1, 0]), AffineMap.of([0, -1], T - 1)))
    assert node is ir.einsum([flip], [(0, 1)], (0,))


def test_a_sum_from_one_is_shifted_to_zero():
    # Σ_{t=1}^{T-1} X[b, t] - X[b, t - 1]: the reads at offsets 1 and 0 over T - 1 steps.
    node = _translator().scalar(sp.Sum(X[b, t] - X[b, t - 1], (t, 1, T - 1), (b, 0, n - 1)))
    xv = np.random.default_rng(0).normal(size=(3, 5))
    (value,) = evaluate([node], {"X": xv}, {n: 3, T: 5})
    np.testing.assert_allclose(value, (xv[:, 1:] - xv[:, :-1]).sum(), rtol=1e-12)


def test_entries_outside_the_array_read_as_zero():
    # Padding 1 on both sides of a width-3 window: Σ_t (X[b, t - 1] + X[b, t] + X[b, t + 1]).
    expr = sp.Sum(X[b, t + k - 1] * W[k], (k, 0, K - 1), (t, 0, T - 1), (b, 0, n - 1))
    node = _translator().scalar(expr)
    xv, wv = np.arange(1.0, 6.0)[None], np.array([1.0, 10.0, 100.0])
    (value,) = evaluate([node], {"X": xv, "W": wv}, {n: 1, T: 5, K: 3})
    padded = np.concatenate([[0.0], xv[0], [0.0]])
    expected = sum(wv @ padded[s:s + 3] for s in range(5))
    assert value == pytest.approx(expected, rel=1e-14)


def test_an_integer_index_array_gathers_rows():
    node, indices = _translator().indexed(E[idx[b], j])
    assert node is ir.take(LE, Lidx) and indices == (b, j)
    # Along another axis: the table is transposed first.
    node, indices = _translator().indexed(E[j, idx[b]])
    assert node is ir.take(ir.einsum([LE], [(0, 1)], (1, 0)), Lidx) and indices == (b, j)


ERRORS = {
    "product of indices": (W[k] * X[b, t * k], "not affine"),
    "square": (W[k] * X[b, t**2], "not affine"),
    "floor division": (W[k] * X[b, sp.floor(t / 2)], "not affine"),
    "fractional coefficient": (W[k] * X[b, t / 2 + k], "not an integer"),
    "float index array": (W[k] * E[sp.IndexedBase("v", shape=(n,))[b], k], "not declared integer"),
    "index array plus one": (W[k] * E[idx[b] + 1, k], "one entry of an integer index array"),
    "two index arrays": (W[k] * E[idx[b], idx[b]], "2 index arrays"),
    "delta of two computed positions": (sp.KroneckerDelta(t + 1, k + 1) * W[k] * X[b, t],
                                        "needs one plain index symbol"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_other_indices_are_refused_saying_what_is_accepted(case):
    body, message = ERRORS[case]
    expr = sp.Sum(body, (k, 0, K - 1), (t, 0, T - K), (b, 0, n - 1))
    with pytest.raises(UnsupportedError, match=message):
        _translator().scalar(expr)


def test_a_sum_over_a_range_that_does_not_fit_the_array_is_refused():
    # b runs over T values but is the plain index of an axis of dimension n (not provably
    # longer); an affine index may run past the array (zero padding), a plain one may not.
    expr = sp.Sum(W[k] * X[b, t + k], (k, 0, K - 1), (t, 0, T - K), (b, 0, T - 1))
    with pytest.raises(ShapeMismatchError, match="runs over T values"):
        _translator().scalar(expr)


def test_a_delta_of_a_computed_position_is_a_read_of_the_identity():
    # Σ_{t, k} [u = 2 t + k] W[k] X[b, t]: the transposed convolution in delta form (as a
    # scatter prints when it keeps its condition), against the same sum written in NumPy.
    u = sp.Symbol("u", integer=True)
    translator = _translator()
    translator.index_dims[u] = T
    expr = sp.Sum(sp.KroneckerDelta(u, 2 * t + k) * W[k] * X[b, t], (t, 0, T - 1),
                  (k, 0, K - 1))
    node, indices = translator.indexed(expr)
    assert set(indices) == {u, b}
    rng = np.random.default_rng(1)
    xv, wv = rng.normal(size=(2, 6)), rng.normal(size=3)
    (got,) = evaluate([node], {"X": xv, "W": wv}, {n: 2, T: 6, K: 3})
    expected = np.zeros((6, 2))
    for tt in range(6):
        for kk in range(3):
            if 2 * tt + kk < 6:
                expected[2 * tt + kk] += wv[kk] * xv[:, tt]
    got = got if indices == (u, b) else got.T
    np.testing.assert_allclose(got, expected, rtol=1e-12)
