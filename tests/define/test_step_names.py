"""A step's array read back under its name by another kind of symbol: an entrywise step
``S[i, j] = ...`` (an ``IndexedBase``) used as ``MatrixSymbol("S", n, k)`` in a later matrix
step is that step, never a new input of the same name (whose gradient would be 0)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.errors import ShapeMismatchError

n, k = sp.symbols("n k", integer=True, positive=True)
W = sp.MatrixSymbol("W", n, k)
V = sp.MatrixSymbol("V", k, 1)
i, j = sp.symbols("i j", integer=True)
S_entries = sp.IndexedBase("S", shape=(n, k))


def test_an_entrywise_step_read_as_a_matrix_is_that_step():
    # L = Σ_i (W² V)_i with W² squared entrywise in index notation, read as a matrix:
    # dL/dW = 2 W ⊙ (1 V^T), dL/dV = (W²)^T 1 (by hand).
    model = [(S_entries[i, j], W[i, j] ** 2),
             (sp.Symbol("L"), symdl.total(sp.MatrixSymbol("S", n, k) * V))]
    der = symdl.derive(model, wrt=[W, V])
    rng = np.random.default_rng(0)
    w, v = rng.normal(size=(3, 2)), rng.normal(size=(2, 1))
    got = der.evaluate({"W": w, "V": v})
    assert got["value"] == pytest.approx(float(np.sum(w**2 @ v)), rel=1e-12)
    np.testing.assert_allclose(got["grad:W"], 2 * w * v.T, rtol=1e-12)
    np.testing.assert_allclose(got["grad:V"], (w**2).sum(axis=0)[:, None], rtol=1e-12)
    assert "S" not in der.leaves  # no input named after the step


def test_a_step_read_with_another_shape_is_a_typed_error():
    model = [(S_entries[i, j], W[i, j] ** 2),
             (sp.Symbol("L"), symdl.total(sp.MatrixSymbol("S", k, n) * W))]
    with pytest.raises(ShapeMismatchError, match="S is a named step of shape"):
        symdl.derive(model, wrt=[W])
