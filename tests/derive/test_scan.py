"""Recurrences over a symbolic length (``symdl.scan``): backprop through time, once for
every ``T``, checked against ``torch.nn.RNN`` (float64 autograd) at several lengths."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl import ir
from symdl.errors import DefinitionError, ShapeMismatchError
from symdl.ir.evaluate import evaluate as ir_evaluate

T, n, d, k = sp.symbols("T n d k", integer=True, positive=True)
X = sp.IndexedBase("X", shape=(T, n, d))
W, U = sp.MatrixSymbol("W", d, k), sp.MatrixSymbol("U", k, k)
b = sp.MatrixSymbol("b", 1, k)
h0 = sp.MatrixSymbol("h0", n, k)
H = sp.IndexedBase("H", shape=(T, n, k))
G = sp.IndexedBase("G", shape=(T, n, k))
t, i, j = sp.symbols("t i j", integer=True)


def rnn_step(h, x):
    return symdl.tanh(x * W + h * U + symdl.bias(b, n))


def rnn_model():
    loss = sp.Sum(G[t, i, j] * H[t, i, j], (t, 0, T - 1), (i, 0, n - 1), (j, 0, k - 1))
    return [(H, symdl.scan(rnn_step, h0, X, T)), (sp.Symbol("L"), loss)]


@pytest.fixture(scope="module")
def rnn_derivation():
    return symdl.derive(rnn_model(), wrt=[W, U, b, h0, X])


def _values(rng, steps, rows=3, inputs=4, hidden=2):
    return dict(X=rng.normal(size=(steps, rows, inputs)), W=rng.normal(size=(inputs, hidden)),
                U=rng.normal(size=(hidden, hidden)), b=rng.normal(size=(1, hidden)),
                h0=rng.normal(size=(rows, hidden)), G=rng.normal(size=(steps, rows, hidden)))


def torch_rnn(values, dtype=torch.float64):
    """The value and gradients of Σ G ⊙ H from torch.nn.RNN, its weights mapped by hand
    (torch computes x W_ih^T + b_ih + h W_hh^T + b_hh; symdl's step is x W + h U + b)."""
    inputs, hidden = values["W"].shape
    rnn = torch.nn.RNN(inputs, hidden, nonlinearity="tanh", dtype=dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor(values["W"].T))
        rnn.weight_hh_l0.copy_(torch.tensor(values["U"].T))
        rnn.bias_ih_l0.copy_(torch.tensor(values["b"][0]))
        rnn.bias_hh_l0.zero_()
    x = torch.tensor(values["X"], dtype=dtype, requires_grad=True)
    h = torch.tensor(values["h0"][None], dtype=dtype, requires_grad=True)
    out, _ = rnn(x, h)
    loss = (out * torch.tensor(values["G"], dtype=dtype)).sum()
    loss.backward()
    return {"value": loss.item(), "grad:W": rnn.weight_ih_l0.grad.numpy().T,
            "grad:U": rnn.weight_hh_l0.grad.numpy().T,
            "grad:b": rnn.bias_ih_l0.grad.numpy()[None], "grad:h0": h.grad.numpy()[0],
            "grad:X": x.grad.numpy()}


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_rnn_backprop_through_time_matches_torch(rnn_derivation, steps):
    values = _values(np.random.default_rng(steps), steps)
    got = rnn_derivation.evaluate(values)
    want = torch_rnn(values)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-10, atol=1e-10, err_msg=key)


def test_the_derivation_does_not_unroll(rnn_derivation):
    # One scan node, with a step of a few nodes, whatever the length: nothing grows with T.
    scans = [node for node in ir.topological_order(list(rnn_derivation.output_nodes().values()))
             if isinstance(node, ir.Scan)]
    assert scans and all(node.length == T for node in scans)
    assert all(ir.count_nodes(node.body_roots()) < 40 for node in scans)


def test_backprop_reads_the_stored_states(rnn_derivation):
    # tanh' = 1 - h_t²: the reverse loop reads h_t from the forward pass, it does not compute
    # x_t W + h_{t-1} U + b again.
    grad = rnn_derivation.gradient_node(W)
    backward = [node for node in ir.topological_order([grad])
                if isinstance(node, ir.Scan) and (node.reverse or not node.carry)]
    assert len(backward) == 2  # the adjoint recurrence and the sum over t
    for node in backward:
        body = ir.topological_order(node.body_roots(), stop=list(node.closure))
        assert not [m for m in body if isinstance(m, ir.Map) and m.fn.expr.has(sp.tanh)]


def test_printed_equations_name_the_recurrence(rnn_derivation):
    text = "\n".join(str(e) for e in rnn_derivation.equations())
    assert "t=T..1" in text and "dh_next <-" in text and "Sum_{t=1..T}" in text
    assert "h_prev = H[t-1]" in text


def test_hessian_vector_products_through_a_scan_match_finite_differences(rnn_derivation):
    # Forward mode carries the state and its tangent: H v for U along V is the derivative of
    # the gradient, checked by central differences of the (torch-checked) gradient.
    values = _values(np.random.default_rng(3), 3)
    direction = np.random.default_rng(4).normal(size=values["U"].shape)
    Ud = sp.MatrixSymbol("V_dir", k, k)
    hvp = rnn_derivation.hvp_node(W, {U: ir.leaf("V_dir", (k, k), Ud)})
    got = ir_evaluate([hvp], {**values, "V_dir": direction},
                      rnn_derivation.infer_dims(values))[0]
    step = 1e-6
    up = rnn_derivation.evaluate({**values, "U": values["U"] + step * direction})["grad:W"]
    down = rnn_derivation.evaluate({**values, "U": values["U"] - step * direction})["grad:W"]
    np.testing.assert_allclose(got, (up - down) / (2 * step), rtol=1e-6, atol=1e-8)


def test_bad_scans_are_typed_errors():
    with pytest.raises(DefinitionError, match="IndexedBase of shape"):
        symdl.scan(rnn_step, h0, sp.MatrixSymbol("Y", n, d), T)
    with pytest.raises(ShapeMismatchError, match="returns shape"):
        symdl.scan(lambda h, x: x * W * U.T[:, :1], h0, X, T)
    with pytest.raises(ShapeMismatchError, match="steps but the scan runs"):
        symdl.scan(rnn_step, h0, X, sp.Symbol("S", integer=True, positive=True))
    with pytest.raises(DefinitionError, match="initial state must be a matrix"):
        symdl.scan(rnn_step, sp.Symbol("z"), X, T)
    with pytest.raises(ShapeMismatchError, match="states of a scan have shape"):
        symdl.derive([(sp.IndexedBase("H", shape=(T, n)), symdl.scan(rnn_step, h0, X, T)),
                      (sp.Symbol("L"), sp.Sum(H[t, i, j], (t, 0, T - 1), (i, 0, n - 1),
                                               (j, 0, k - 1)))], wrt=[W])
