"""Windowed definitions in plain SymPy (affine indices, index arrays) derived end to end.

Each definition is written as a user would (``IndexedBase`` with a shape, ``Sum``) and
differentiated by ``symdl.derive``; values, gradients, Hessian blocks and Hessian-vector
products are evaluated by NumPy (``der.evaluate``, ``symdl.ir.evaluate``) and compared with
``torch.nn.functional`` autograd in float64 (the oracle) and central finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import ir
from symdl.errors import EvaluationError
from symdl.ir.evaluate import evaluate

torch = pytest.importorskip("torch")
F = torch.nn.functional

RNG = np.random.default_rng(13)
n, T, K = sp.symbols("n T K", integer=True, positive=True)
b, t, k = sp.symbols("b t k", integer=True)


def _hvp(der: symdl.Derivation, p, values: dict, directions: dict, sizes: dict) -> np.ndarray:
    """The Hessian-vector product of ``der``'s loss for ``p``, along ``directions``."""
    leaves = {q: ir.leaf("V" + str(q), tuple(q.shape), sp.IndexedBase("V" + str(q),
                                                                      shape=q.shape))
              for q in directions}
    node = der.hvp_node(p, leaves)
    named = dict(values)
    named.update({"V" + str(q): v for q, v in directions.items()})
    (result,) = evaluate([node], named, sizes)
    return result


def _torch_all(loss_fn, arrays: list[np.ndarray], directions: list[np.ndarray],
               hessian: bool = True):
    """Value, gradients, Hessian-vector products and (when asked) Hessian blocks by torch
    autograd."""
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    value = loss_fn(*ts)
    grads = torch.autograd.grad(value, ts, create_graph=True)
    hvps = torch.autograd.grad(sum((g * torch.tensor(v)).sum()
                                   for g, v in zip(grads, directions, strict=True)), ts,
                               retain_graph=True)
    blocks = torch.autograd.functional.hessian(
        loss_fn, tuple(torch.tensor(a) for a in arrays)) if hessian else None
    return (value.item(), [g.detach().numpy() for g in grads], [h.numpy() for h in hvps],
            blocks)


def _close(got, expected) -> None:
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_the_issue_conv1d_derives_with_hessian_and_hvp_like_torch():
    X, W = sp.IndexedBase("X", shape=(n, T)), sp.IndexedBase("W", shape=(K,))
    L = sp.Sum(sp.Sum(W[k] * X[b, t + k], (k, 0, K - 1))**2, (t, 0, T - K), (b, 0, n - 1))
    der = symdl.derive(L, wrt=[W, X], hessian=True)
    xv, wv = RNG.normal(size=(2, 7)), RNG.normal(size=3)
    out = der.evaluate({"X": xv, "W": wv})

    def loss(x, w):
        return (F.conv1d(x[:, None], w[None, None])**2).sum()

    vx, vw = RNG.normal(size=xv.shape), RNG.normal(size=wv.shape)
    value, (gx, gw), (hx, hw), hessian = _torch_all(loss, [xv, wv], [vx, vw])
    _close(out["value"], value)
    _close(out["grad:W"], gw)
    _close(out["grad:X"], gx)
    _close(out["hessian:W,W"], hessian[1][1].numpy())
    _close(out["hessian:X,X"], hessian[0][0].numpy())
    _close(out["hessian:W,X"], hessian[1][0].numpy())
    sizes = {n: 2, T: 7, K: 3}
    directions = {X: vx, W: vw}
    _close(_hvp(der, W, {"X": xv, "W": wv}, directions, sizes), hw)
    _close(_hvp(der, X, {"X": xv, "W": wv}, directions, sizes), hx)


def test_a_strided_dilated_padded_channels_first_conv2d_matches_torch():
    # Y[b, o, i, j] = Σ_{c, r, s} Kw[o, c, r, s] X[b, c, 2i + 2r - 1, 2j + 2s - 1]:
    # stride 2, dilation 2, padding 1, several input channels; a squared error to Y0.
    C, Co, H, R, Ho = sp.symbols("C Co H R Ho", integer=True, positive=True)
    c, o, i, j, r, s = sp.symbols("c o i j r s", integer=True)
    X = sp.IndexedBase("X", shape=(n, C, H, H))
    Kw = sp.IndexedBase("Kw", shape=(Co, C, R, R))
    Y0 = sp.IndexedBase("Y0", shape=(n, Co, Ho, Ho))
    conv = sp.Sum(Kw[o, c, r, s] * X[b, c, 2 * i + 2 * r - 1, 2 * j + 2 * s - 1],
                  (c, 0, C - 1), (r, 0, R - 1), (s, 0, R - 1))
    L = sp.Sum(sp.tanh(conv - Y0[b, o, i, j])**2,
               (b, 0, n - 1), (o, 0, Co - 1), (i, 0, Ho - 1), (j, 0, Ho - 1))
    der = symdl.derive(L, wrt=[Kw, X])
    # 7 x 7 input, 3 x 3 kernel, stride 2, dilation 2, padding 1: 3 x 3 output.
    xv, kv = RNG.normal(size=(2, 3, 7, 7)), RNG.normal(size=(2, 3, 3, 3))
    yv = RNG.normal(size=(2, 2, 3, 3))
    out = der.evaluate({"X": xv, "Kw": kv, "Y0": yv})

    def loss(x, kw):
        y = F.conv2d(x, kw, stride=2, padding=1, dilation=2)
        return (torch.tanh(y - torch.tensor(yv))**2).sum()

    vx, vk = RNG.normal(size=xv.shape), RNG.normal(size=kv.shape)
    value, (gx, gk), (hx, hk), _ = _torch_all(loss, [xv, kv], [vx, vk], hessian=False)
    _close(out["value"], value)
    _close(out["grad:Kw"], gk)
    _close(out["grad:X"], gx)
    sizes = {n: 2, C: 3, Co: 2, H: 7, R: 3, Ho: 3}
    values = {"X": xv, "Kw": kv, "Y0": yv}
    _close(_hvp(der, Kw, values, {X: vx, Kw: vk}, sizes), hk)
    _close(_hvp(der, X, values, {X: vx, Kw: vk}, sizes), hx)


def test_average_pooling_by_strided_indices_matches_torch():
    H = sp.Symbol("H", integer=True, positive=True)
    i, j, a, c = sp.symbols("i j a c", integer=True)
    X = sp.IndexedBase("X", shape=(n, 2 * H, 2 * H))
    G = sp.IndexedBase("G", shape=(n, H, H))
    pooled = sp.Sum(X[b, 2 * i + a, 2 * j + c], (a, 0, 1), (c, 0, 1)) / 4
    L = sp.Sum(sp.exp(pooled) * G[b, i, j], (b, 0, n - 1), (i, 0, H - 1), (j, 0, H - 1))
    der = symdl.derive(L, wrt=[X], hessian=True)
    xv, gv = RNG.normal(size=(2, 6, 6)), RNG.normal(size=(2, 3, 3))
    out = der.evaluate({"X": xv, "G": gv})

    def loss(x):
        return (torch.exp(F.avg_pool2d(x[:, None], 2)[:, 0]) * torch.tensor(gv)).sum()

    value, (gx,), _, hessian = _torch_all(loss, [xv], [xv])
    _close(out["value"], value)
    _close(out["grad:X"], gx)
    _close(out["hessian:X,X"], hessian[0][0].numpy())


def test_a_sum_from_one_shifts_its_index_and_padding_reads_zero():
    # First differences of a sequence: Sum over t from 1; and a padded read x[t - 2] that
    # falls outside at t < 2 (zero), against the same sums written with NumPy.
    x = sp.IndexedBase("x", shape=(T,))
    L = (sp.Sum((x[t] - x[t - 1])**2, (t, 1, T - 1))
         + sp.Sum(x[t] * x[t - 2], (t, 0, T - 1)))
    der = symdl.derive(L, wrt=[x])
    xv = RNG.normal(size=6)
    out = der.evaluate({"x": xv})
    xt = torch.tensor(xv, requires_grad=True)
    ref = ((xt[1:] - xt[:-1])**2).sum() + (xt[2:] * xt[:-2]).sum()
    (gx,) = torch.autograd.grad(ref, (xt,))
    _close(out["value"], ref.item())
    _close(out["grad:x"], gx.numpy())
    # The central difference of the value, entry by entry (the gradient from the definition).
    step = 1e-6
    fd = [(der.evaluate({"x": xv + step * e})["value"]
           - der.evaluate({"x": xv - step * e})["value"]) / (2 * step) for e in np.eye(6)]
    np.testing.assert_allclose(out["grad:x"], fd, rtol=1e-7, atol=1e-8)


@pytest.fixture(scope="module")
def embedding():
    V, D = sp.symbols("V D", integer=True, positive=True)
    jj = sp.Symbol("jj", integer=True)
    E = sp.IndexedBase("E", shape=(V, D))
    idx = sp.IndexedBase("idx", shape=(n,), integer=True)
    G = sp.IndexedBase("G", shape=(n, D))
    L = sp.Sum(sp.sin(E[idx[b], jj]) * G[b, jj], (b, 0, n - 1), (jj, 0, D - 1))
    return symdl.derive(L, wrt=[E], hessian=True)


def test_an_integer_index_array_gathers_rows_like_torch_embedding(embedding):
    ev, gv = RNG.normal(size=(5, 3)), RNG.normal(size=(4, 3))
    iv = np.array([4, 0, 4, 2])
    out = embedding.evaluate({"E": ev, "idx": iv, "G": gv})
    et = torch.tensor(ev, requires_grad=True)
    ref = (torch.sin(F.embedding(torch.tensor(iv), et)) * torch.tensor(gv)).sum()
    (ge,) = torch.autograd.grad(ref, (et,))
    hessian = torch.autograd.functional.hessian(
        lambda e: (torch.sin(F.embedding(torch.tensor(iv), e)) * torch.tensor(gv)).sum(),
        torch.tensor(ev))
    _close(out["value"], ref.item())
    _close(out["grad:E"], ge.numpy())
    _close(out["hessian:E,E"], hessian.numpy())


@pytest.mark.parametrize("bad,message", [(np.array([0.0, 1.5, 2.0, 3.0]), "must be an integer"),
                                         (np.array([0, 1, 5, 2]), "outside 0 .. 4")])
def test_a_bad_index_array_is_a_typed_error(embedding, bad, message):
    with pytest.raises(EvaluationError, match=message):
        embedding.evaluate({"E": np.ones((5, 3)), "idx": bad, "G": np.ones((4, 3))})


def test_an_index_array_is_not_a_parameter(embedding):
    idx = sp.IndexedBase("idx", shape=(n,), integer=True)
    with pytest.raises(symdl.DerivationError, match="idx is an integer index array"):
        symdl.derive(embedding.steps[-1][1],
                     wrt=[sp.IndexedBase("E", shape=embedding.leaves["E"].shape), idx])


def test_checks_draw_index_arrays_as_rows_of_their_table(embedding):
    # symdl.check's inputs: an index array holds row numbers (repeats included), never a
    # value outside the table, which evaluation would refuse.
    from types import SimpleNamespace

    from symdl.verify.sampling import draw_inputs

    shapes = {name: leaf.shape for name, leaf in embedding.leaves.items()}
    values, sizes = draw_inputs(embedding, SimpleNamespace(inputs=shapes), seed=5)
    rows = int(embedding.leaves["E"].shape[0].subs(sizes))
    drawn = values["idx"]
    assert np.array_equal(drawn, np.round(drawn)) and drawn.min() >= 0 and drawn.max() < rows
    embedding.evaluate(values, sizes)  # accepted
