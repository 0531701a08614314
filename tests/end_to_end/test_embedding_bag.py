"""A model a user writes without the vocabulary: a mean of embedding rows (an entrywise step
over an integer index array), read by the next step as a MatrixSymbol of the same name, then
tanh, a dense layer and softmax cross-entropy. Checked against torch's embedding_bag; its
printed results and symdl.check's SymPy reference must evaluate (not be skipped)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl.errors import ShapeMismatchError

n, T, V, d, c = sp.symbols("n T V d c", integer=True, positive=True)
ids = sp.IndexedBase("ids", shape=(n, T), integer=True)
E = sp.IndexedBase("E", shape=(V, d))
W = sp.MatrixSymbol("W", d, c)
Y = sp.MatrixSymbol("Y", n, c)
b, t, j = sp.symbols("b t j", integer=True)
Hm = sp.IndexedBase("Hm", shape=(n, d))
MODEL = [
    (Hm[b, j], sp.Sum(E[ids[b, t], j], (t, 0, T - 1)) / T),
    # The step above, read as a matrix: the same array, not a second input called Hm.
    (sp.Symbol("L"), symdl.softmax_cross_entropy(symdl.tanh(sp.MatrixSymbol("Hm", n, d)) * W, Y)),
]


@pytest.fixture(scope="module")
def der():
    return symdl.derive(MODEL, wrt=[E, W])


def _values(seed=0):
    rng = np.random.default_rng(seed)
    N, TT, VV, D, C = 5, 7, 11, 4, 3
    return dict(ids=rng.integers(0, VV, size=(N, TT)), E=rng.normal(size=(VV, D)),
                W=rng.normal(size=(D, C)), Y=np.eye(C)[rng.integers(0, C, N)])


def test_matches_torch_embedding_bag(der):
    v = _values()
    result = der.compile(jit=False)(**v)
    e = torch.tensor(v["E"], requires_grad=True)
    w = torch.tensor(v["W"], requires_grad=True)
    h = torch.nn.functional.embedding_bag(torch.tensor(v["ids"]), e, mode="mean")
    loss = torch.nn.functional.cross_entropy(torch.tanh(h) @ w, torch.tensor(v["Y"]).argmax(1))
    loss.backward()
    assert set(der.compile(jit=False).input_names) == {"ids", "E", "W", "Y"}
    assert result.value == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(result.grad["E"], e.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(result.grad["W"], w.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_prints_and_passes_check_with_the_sympy_reference(der):
    # The backprop equations print (a softmax over a step in index notation had no matrix
    # form and raised an internal error) ...
    text = "\n".join(str(eq) for eq in der.equations())
    assert "softmax" in text and "ids" in text
    # ... and the reference evaluates them: integer ids stay integers, softmax entries at
    # fixed positions normalise over their lane. Every row ran; none was skipped.
    report = symdl.check(der, dtype=np.float64, jit=False, hvp=False)
    assert report.ok, report
    compared = {(str(row.output), row.method) for row in report.rows}
    assert {("value", "sympy reference"), ("grad:E", "sympy reference"),
            ("grad:W", "sympy reference")} <= compared
    assert not report.skipped, report


def test_a_step_read_with_another_shape_is_a_typed_error():
    model = [MODEL[0], (sp.Symbol("L"), symdl.sum(sp.MatrixSymbol("Hm", d, n)))]
    with pytest.raises(ShapeMismatchError, match="Hm is a named step of shape"):
        symdl.derive(model, wrt=[E])
