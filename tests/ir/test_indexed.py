"""Computed positions in the IR (``symdl.ir.indexed``): windows, scatters, gathers, maxima.

The IR is built by hand here (the front end's spellings are tested in tests/define/): values
through ``ir.evaluate``, gradients through reverse mode and Hessian-vector products through
forward-over-reverse, against ``torch.nn.functional`` in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from symdl import ir
from symdl.derive import autodiff
from symdl.errors import EvaluationError, ShapeMismatchError
from symdl.ir import AffineMap
from symdl.ir.evaluate import evaluate

torch = pytest.importorskip("torch")
F = torch.nn.functional

n, c, t, k, o = sp.symbols("n c t k o", integer=True, positive=True)
RNG = np.random.default_rng(7)


def _conv1d_read(x: ir.Node, out_len: sp.Expr, width: sp.Expr, stride: int, dilation: int,
                 padding: int) -> ir.Node:
    """``X[b, ch, s*t + d*k - p]`` over the axes ``(b, ch, t, k)``."""
    dims = (x.shape[0], x.shape[1], out_len, width)
    index = (AffineMap.axis(0, 4), AffineMap.axis(1, 4),
             AffineMap.of([0, 0, stride, dilation], -padding))
    return ir.affine_read(x, dims, index)


@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, 0), (2, 1, 1), (1, 2, 2), (3, 2, 1)])
def test_conv1d_value_gradients_and_hvp_match_torch(stride, dilation, padding):
    sizes = {n: 2, c: 3, t: 11, k: 3, o: 4}
    length = (11 + 2 * padding - dilation * (3 - 1) - 1) // stride + 1
    tout = sp.Symbol("tout", integer=True, positive=True)
    sizes[tout] = length
    x = ir.leaf("X", (n, c, t), sp.Symbol("X"))
    w = ir.leaf("W", (o, c, k), sp.Symbol("W"))
    read = _conv1d_read(x, tout, k, stride, dilation, padding)
    # Y[b, o, t] = Σ_{c, k} W[o, c, k] R[b, c, t, k]; L = Σ tanh(Y)
    y = ir.einsum([w, read], [(4, 1, 3), (0, 1, 2, 3)], (0, 4, 2))
    loss = ir.einsum([ir.map_(sp.Lambda(sp.Symbol("z"), sp.tanh(sp.Symbol("z"))), y)],
                     [(0, 1, 2)], ())
    xv, wv = RNG.normal(size=(2, 3, 11)), RNG.normal(size=(4, 3, 3))
    grads, _ = autodiff.reverse(loss, [x, w])
    values = evaluate([loss, grads[id(x)], grads[id(w)]], {"X": xv, "W": wv}, sizes)

    xt = torch.tensor(xv, requires_grad=True)
    wt = torch.tensor(wv, requires_grad=True)
    ref = torch.tanh(F.conv1d(xt, wt, stride=stride, padding=padding, dilation=dilation)).sum()
    gx, gw = torch.autograd.grad(ref, (xt, wt), create_graph=True)
    np.testing.assert_allclose(values[0], ref.item(), rtol=1e-12)
    np.testing.assert_allclose(values[1], gx.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(values[2], gw.detach().numpy(), rtol=1e-10, atol=1e-12)

    # Hessian-vector product through the window (forward over reverse) against torch.
    vx, vw = RNG.normal(size=xv.shape), RNG.normal(size=wv.shape)
    dx = ir.leaf("VX", (n, c, t), sp.Symbol("VX"))
    dw = ir.leaf("VW", (o, c, k), sp.Symbol("VW"))
    hvp_x = autodiff.directional(grads[id(x)], {id(x): dx, id(w): dw})
    hvp_w = autodiff.directional(grads[id(w)], {id(x): dx, id(w): dw})
    got = evaluate([hvp_x, hvp_w], {"X": xv, "W": wv, "VX": vx, "VW": vw}, sizes)
    hx, hw = torch.autograd.grad((gx * torch.tensor(vx)).sum() + (gw * torch.tensor(vw)).sum(),
                                 (xt, wt))
    np.testing.assert_allclose(got[0], hx.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1], hw.numpy(), rtol=1e-10, atol=1e-12)


def test_the_jacobian_through_a_window_has_the_seed_axes():
    # The Hessian block of a windowed loss: forward mode carries the parameter's axes.
    x = ir.leaf("X", (n, t), sp.Symbol("X"))
    tout = sp.Symbol("tout", integer=True, positive=True)
    read = ir.affine_read(x, (n, tout, k), (AffineMap.axis(0, 3), AffineMap.of([0, 1, 1])))
    w = ir.leaf("W", (k,), sp.Symbol("W"))
    y = ir.einsum([w, read], [(2,), (0, 1, 2)], (0, 1))
    loss = ir.einsum([y, y], [(0, 1), (0, 1)], ())
    grads, _ = autodiff.reverse(loss, [w])
    hessian = autodiff.jacobian(grads[id(w)], w)
    sizes = {n: 3, t: 9, k: 4, tout: 6}
    xv, wv = RNG.normal(size=(3, 9)), RNG.normal(size=4)
    (h,) = evaluate([hessian], {"X": xv, "W": wv}, sizes)
    windows = np.lib.stride_tricks.sliding_window_view(xv, 4, axis=1)  # (3, 6, 4)
    expected = 2 * np.einsum("btk,btl->kl", windows, windows)
    np.testing.assert_allclose(h, expected, rtol=1e-12)


def test_a_reshape_is_a_one_to_one_scatter_and_its_gradient_the_read():
    # flatten (h, w, ch) -> h*W*C + w*C + ch, as a scatter; its adjoint reads back.
    h, wd, ch = sp.symbols("h wd ch", integer=True, positive=True)
    x = ir.leaf("X", (h, wd, ch), sp.Symbol("X"))
    flat = ir.affine_scatter(x, (h * wd * ch,), (AffineMap.of([wd * ch, ch, 1]),))
    v = ir.leaf("v", (h * wd * ch,), sp.Symbol("v"))
    loss = ir.einsum([flat, v], [(0,), (0,)], ())
    grads, _ = autodiff.reverse(loss, [x])
    xv, vv = RNG.normal(size=(2, 3, 4)), RNG.normal(size=24)
    got = evaluate([flat, grads[id(x)]], {"X": xv, "v": vv}, {h: 2, wd: 3, ch: 4})
    np.testing.assert_array_equal(got[0], xv.reshape(-1))
    np.testing.assert_array_equal(got[1], vv.reshape(2, 3, 4))


def test_max_pool_derivative_goes_to_the_first_maximum_like_torch():
    # 2x2 max pooling, stride 2, as a read over (b, i, j, a, c) and two maxima; with ties.
    hh, ww, ho, wo = sp.symbols("hh ww ho wo", integer=True, positive=True)
    x = ir.leaf("X", (n, hh, ww), sp.Symbol("X"))
    read = ir.affine_read(x, (n, ho, wo, 2, 2), (
        AffineMap.axis(0, 5), AffineMap.of([0, 2, 0, 1, 0]), AffineMap.of([0, 0, 2, 0, 1])))
    pooled = ir.max_along(ir.max_along(read, 4), 3)
    g = ir.leaf("G", pooled.shape, sp.Symbol("G"))
    loss = ir.einsum([pooled, g], [(0, 1, 2, 3, 4)] * 2, ())
    grads, _ = autodiff.reverse(loss, [x])
    xv = RNG.integers(0, 3, size=(2, 6, 6)).astype(float)  # many ties
    gv = RNG.normal(size=(2, 3, 3, 1, 1))
    sizes = {n: 2, hh: 6, ww: 6, ho: 3, wo: 3}
    got = evaluate([pooled, grads[id(x)]], {"X": xv, "G": gv}, sizes)
    xt = torch.tensor(xv[:, None], requires_grad=True)
    ref = F.max_pool2d(xt, 2, 2)
    (gx,) = torch.autograd.grad((ref * torch.tensor(gv[..., 0, 0][:, None])).sum(), (xt,))
    np.testing.assert_array_equal(got[0][..., 0, 0], ref.detach().numpy()[:, 0])
    # torch takes the first maximum of the window in row-major order; maxima taken axis by
    # axis (columns first, then rows) take the first row holding the maximum and, in it, the
    # first column: the same entry.
    np.testing.assert_array_equal(got[1], gx.numpy()[:, 0])


def test_embedding_gathers_rows_and_scatters_gradients_like_torch():
    v, d = sp.symbols("v d", integer=True, positive=True)
    table = ir.leaf("E", (v, d), sp.Symbol("E"))
    idx = ir.leaf("idx", (n, t), sp.Symbol("idx"))
    rows = ir.take(table, idx)
    assert rows.shape == (n, t, d)
    g = ir.leaf("G", (n, t, d), sp.Symbol("G"))
    loss = ir.einsum([ir.map_(sp.Lambda(sp.Symbol("z"), sp.sin(sp.Symbol("z"))), rows), g],
                     [(0, 1, 2)] * 2, ())
    grads, _ = autodiff.reverse(loss, [table])
    ev, iv, gv = RNG.normal(size=(5, 3)), np.array([[0, 4, 4, 1], [4, 2, 0, 0]]), RNG.normal(
        size=(2, 4, 3))
    got = evaluate([loss, grads[id(table)]], {"E": ev, "idx": iv, "G": gv},
                   {n: 2, t: 4, v: 5, d: 3})
    et = torch.tensor(ev, requires_grad=True)
    ref = (torch.sin(F.embedding(torch.tensor(iv), et)) * torch.tensor(gv)).sum()
    (ge,) = torch.autograd.grad(ref, (et,))
    np.testing.assert_allclose(got[0], ref.item(), rtol=1e-12)
    np.testing.assert_allclose(got[1], ge.numpy(), rtol=1e-12)


@pytest.mark.parametrize("bad", [5, -1])
def test_an_index_outside_the_table_is_a_typed_error(bad):
    v, d = sp.symbols("v d", integer=True, positive=True)
    table = ir.leaf("E", (v, d), sp.Symbol("E"))
    idx = ir.leaf("idx", (n,), sp.Symbol("idx"))
    with pytest.raises(EvaluationError, match=rf"idx holds the index {bad} at position \(1,\), "
                                              r"outside 0 \.\. 4"):
        evaluate([ir.take(table, idx)], {"E": np.ones((5, 2)), "idx": np.array([0, bad])},
                 {n: 2, v: 5, d: 2})


def test_a_window_position_must_be_integer():
    x = ir.leaf("X", (n,), sp.Symbol("X"))
    with pytest.raises(ShapeMismatchError, match="integer"):
        ir.affine_read(x, (n,), (AffineMap.of([sp.Rational(1, 2)]),))
    with pytest.raises(ShapeMismatchError, match="rank"):
        ir.affine_read(x, (n,), (AffineMap.axis(0, 1), AffineMap.axis(0, 1)))


def test_the_identity_window_is_the_tensor_itself():
    x = ir.leaf("X", (n, t), sp.Symbol("X"))
    assert ir.affine_read(x, (n, t), (AffineMap.axis(0, 2), AffineMap.axis(1, 2))) is x
    assert ir.affine_scatter(x, (n, t), (AffineMap.axis(0, 2), AffineMap.axis(1, 2))) is x
