"""Kernels for computed positions (``symdl.ir.indexed``): windows read inline with bounds
checks, scatters as loops of their own, gathers by validated integer index arrays, maxima as
row passes. The IR is built by hand (as tests/ir/test_indexed.py does); values and reverse-
mode gradients are compared with ``torch.nn.functional`` in float64 (1e-10) and float32
(1e-5). Kernels run their generated source uninterpreted (``jit=False``: no Numba compile)
except one, which checks that Numba compiles every new kind of loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import ir
from symdl.derive import autodiff
from symdl.errors import KernelArgumentError, UnsupportedError
from symdl.ir import AffineMap
from symdl.kernels.kernel import Kernel
from symdl.kernels.plan import plan
from symdl.kernels.steps import RowMax, ScatterLoop, WindowProduct, scatter_gemm
from symdl.scale.separable import NotRowSeparableError, _Analysis

torch = pytest.importorskip("torch")
F = torch.nn.functional

n, hh, ww, ho, wo, v, d, t = sp.symbols("n hh ww ho wo v d t", integer=True, positive=True)
RNG = np.random.default_rng(13)
TANH = sp.Lambda(sp.Symbol("z"), sp.tanh(sp.Symbol("z")))
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


def _window(x: ir.Node, c_in: int, groups: int, k: int, stride: int, padding: int,
            dilation: int) -> ir.Node:
    """``X[b, g*C + c, s*i + d*a - p, s*j + d*e - p]`` over ``(b, g, c, i, j, a, e)``."""
    cg = c_in // groups
    return ir.affine_read(x, (n, groups, cg, ho, wo, k, k), (
        AffineMap.axis(0, 7), AffineMap.of([0, cg, 1, 0, 0, 0, 0]),
        AffineMap.of([0, 0, 0, stride, 0, dilation, 0], -padding),
        AffineMap.of([0, 0, 0, 0, stride, 0, dilation], -padding)))


def _conv2d(x: ir.Node, w: ir.Node, c_in: int, c_out: int, groups: int, k: int, stride: int,
            padding: int, dilation: int) -> ir.Node:
    """torch's conv2d (NCHW) in the IR: one einsum of the kernel with the window; with
    groups, the kernel's rows split by group (a read) and the groups' channels put back side
    by side (a scatter)."""
    if groups == 1:  # im2col and BLAS (steps.WindowProduct, steps.ScatterGemm)
        read = ir.affine_read(x, (n, c_in, ho, wo, k, k), (
            AffineMap.axis(0, 6), AffineMap.axis(1, 6),
            AffineMap.of([0, 0, stride, 0, dilation, 0], -padding),
            AffineMap.of([0, 0, 0, stride, 0, dilation], -padding)))
        return ir.einsum([w, read], [(6, 1, 4, 5), (0, 1, 2, 3, 4, 5)], (0, 6, 2, 3))
    og = c_out // groups
    wg = ir.affine_read(w, (groups, og, c_in // groups, k, k), (
        AffineMap.of([og, 1, 0, 0, 0]), AffineMap.axis(2, 5), AffineMap.axis(3, 5),
        AffineMap.axis(4, 5)))
    read = _window(x, c_in, groups, k, stride, padding, dilation)
    y = ir.einsum([wg, read], [(1, 7, 2, 5, 6), (0, 1, 2, 3, 4, 5, 6)], (0, 1, 7, 3, 4))
    return ir.affine_scatter(y, (n, c_out, ho, wo), (
        AffineMap.axis(0, 5), AffineMap.of([0, og, 1, 0, 0]), AffineMap.axis(3, 5),
        AffineMap.axis(4, 5)))


def _steps(kern: Kernel) -> list:
    """The planned steps of ``kern``: its outputs (after the exact rewrites) planned again
    through the public planner, as Kernel plans them."""
    return plan({str(key): node for key, node in kern.output_nodes.items()}).steps


CONV_CASES = [  # (c_in, c_out, groups, k, stride, padding, dilation)
    (3, 4, 1, 3, 1, 1, 1), (4, 6, 2, 3, 2, 1, 1), (2, 2, 1, 2, 1, 2, 2), (4, 4, 4, 3, 2, 0, 1)]


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in CONV_CASES]
                         + [(c, np.float32) for c in CONV_CASES[:2]])
def test_conv2d_values_and_gradients_match_torch(case, dtype):
    c_in, c_out, groups, k, stride, padding, dilation = case
    x = ir.leaf("X", (n, c_in, hh, ww), sp.Symbol("X"))
    w = ir.leaf("W", (c_out, c_in // groups, k, k), sp.Symbol("W"))
    g = ir.leaf("G", (n, c_out, ho, wo), sp.Symbol("G"))
    y = _conv2d(x, w, c_in, c_out, groups, k, stride, padding, dilation)
    loss = ir.einsum([ir.map_(TANH, y), g], [(0, 1, 2, 3)] * 2, ())
    grads, _ = autodiff.reverse(loss, [x, w])
    kern = Kernel({"value": loss, "Y": y, "grad:X": grads[id(x)], "grad:W": grads[id(w)]},
                  [x, w, g], "conv2d", jit=False)
    size = 7
    out = (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    xv = RNG.normal(size=(2, c_in, size, size))
    wv = RNG.normal(size=(c_out, c_in // groups, k, k))
    gv = RNG.normal(size=(2, c_out, out, out))
    got = kern(X=xv.astype(dtype), W=wv.astype(dtype), G=gv.astype(dtype))
    xt, wt = torch.tensor(xv, requires_grad=True), torch.tensor(wv, requires_grad=True)
    yt = F.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    ref = (torch.tanh(yt) * torch.tensor(gv)).sum()
    gx, gw = torch.autograd.grad(ref, (xt, wt))
    np.testing.assert_allclose(got.value, ref.item(), **TOL[dtype])
    np.testing.assert_allclose(got.outputs["Y"], yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(got.grad["X"], gx.numpy(), **TOL[dtype])
    np.testing.assert_allclose(got.grad["W"], gw.numpy(), **TOL[dtype])
    # dX is a scatter fused with the product it scatters: no (b, c, i, j, a, e) tensor; with
    # one group, the value and dW are im2col products and dX a product then col2im.
    scatters = [s for s in _steps(kern) if isinstance(s, ScatterLoop)]
    assert any(s.fused is not None for s in scatters)
    gemms = [s for s in _steps(kern) if isinstance(s, WindowProduct)]
    assert len(gemms) == (2 if groups == 1 else 0)
    assert (groups == 1) == any(scatter_gemm(s.node, s.fused) is not None for s in scatters)
    windows = [m for s in _steps(kern) for m in s.computed()
               if isinstance(m, ir.AffineRead) and m.arg is x]
    assert not windows, "a window of X was stored"


@pytest.fixture(scope="module")
def jitted_conv1d():
    """One compiled kernel (serial loops only): a strided, dilated, padded convolution."""
    x = ir.leaf("X", (n, hh), sp.Symbol("X"))
    w = ir.leaf("W", (d,), sp.Symbol("W"))
    g = ir.leaf("G", (n, ho), sp.Symbol("G"))
    read = ir.affine_read(x, (n, ho, d), (AffineMap.axis(0, 3), AffineMap.of([0, 2, 2], -1)))
    y = ir.einsum([w, read], [(2,), (0, 1, 2)], (0, 1))
    loss = ir.einsum([ir.map_(TANH, y), g], [(0, 1)] * 2, ())
    grads, _ = autodiff.reverse(loss, [x, w])
    return Kernel({"value": loss, "grad:X": grads[id(x)], "grad:W": grads[id(w)]}, [x, w, g],
                  "conv1d")


def test_a_compiled_strided_dilated_convolution_matches_torch(jitted_conv1d):
    xv, wv = RNG.normal(size=(3, 12)), RNG.normal(size=3)
    gv = RNG.normal(size=(3, 5))  # (12 + 2 - 2*2 - 1) // 2 + 1 = 5
    got = jitted_conv1d(X=xv, W=wv, G=gv, parallel=False)
    xt, wt = torch.tensor(xv, requires_grad=True), torch.tensor(wv, requires_grad=True)
    yt = F.conv1d(xt[:, None], wt[None, None], stride=2, padding=1, dilation=2)[:, 0]
    ref = (torch.tanh(yt) * torch.tensor(gv)).sum()
    gx, gw = torch.autograd.grad(ref, (xt, wt))
    np.testing.assert_allclose(got.value, ref.item(), rtol=1e-10)
    np.testing.assert_allclose(got.grad["X"], gx.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.grad["W"], gw.numpy(), rtol=1e-10, atol=1e-12)


def _pool_read(x: ir.Node, k: int, stride: int, padding: int) -> ir.Node:
    return ir.affine_read(x, (n, ho, wo, k, k), (
        AffineMap.axis(0, 5), AffineMap.of([0, stride, 0, 1, 0], -padding),
        AffineMap.of([0, 0, stride, 0, 1], -padding)))


def _assert_one_pass_pooling(kern: Kernel, axes: tuple) -> None:
    """Max pooling as one pass over each window (the peak and the flat index of its first
    maximum) and a derivative that scatters through that index: no per-row maxima, no one-hot
    mask computed or multiplied (``RowMax`` over a ``max_chain``, ``ScatterLoop.by_index``)."""
    steps = _steps(kern)
    (maximum,) = [s for s in steps if isinstance(s, RowMax)]
    assert maximum.axes == axes
    assert [s.by_index is not None for s in steps if isinstance(s, ScatterLoop)
            and any(isinstance(op, ir.ArgMaxMask) for op, _ in s.value_reads)] == [True]
    assert not any(isinstance(m, ir.ArgMaxMask) for s in steps for g in s.loop_groups()
                   for m in g.members)
    assert "(1.0 if " not in kern.source  # no mask in any loop


def test_one_dimensional_max_pooling_scatters_through_the_stored_index():
    """A max over a 1-D window (k 3, stride 2, padding 1, ties) against torch's max_pool1d."""
    x = ir.leaf("X", (n, t), sp.Symbol("X"))
    read = ir.affine_read(x, (n, ho, 3), (AffineMap.axis(0, 3), AffineMap.of([0, 2, 1], -1)))
    biggest = ir.max_along(read, 2)
    g = ir.leaf("G", biggest.shape, sp.Symbol("G"))
    loss = ir.einsum([ir.map_(TANH, biggest), g], [(0, 1, 2)] * 2, ())
    grads, _ = autodiff.reverse(loss, [x])
    kern = Kernel({"value": loss, "grad:X": grads[id(x)]}, [x, g], "pool1d")  # compiled
    _assert_one_pass_pooling(kern, axes=(2,))
    xv = RNG.integers(1, 4, size=(3, 9)).astype(float)  # positive: zero padding never wins
    gv = RNG.normal(size=(3, 5, 1))
    got = kern(X=xv, G=gv)
    xt = torch.tensor(xv[:, None], requires_grad=True)
    ref = (torch.tanh(F.max_pool1d(xt, 3, 2, 1)[:, 0]) * torch.tensor(gv[..., 0])).sum()
    (gx,) = torch.autograd.grad(ref, (xt,))
    assert got.value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(got.grad["X"], gx.numpy()[:, 0], rtol=1e-12, atol=1e-14)
    xv[1, 4] = np.nan  # the maximum of its windows (numpy's and torch's), which take its NaN
    got = kern(X=xv, G=gv)
    xt = torch.tensor(xv[:, None], requires_grad=True)
    ref = (torch.tanh(F.max_pool1d(xt, 3, 2, 1)[:, 0]) * torch.tensor(gv[..., 0])).sum()
    (gx,) = torch.autograd.grad(ref, (xt,))
    np.testing.assert_allclose(got.grad["X"], gx.numpy()[:, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k,stride,padding", [(2, 2, 0), (3, 1, 1), (3, 2, 1)])
def test_pooling_and_its_gradients_match_torch_with_ties_and_nan(k, stride, padding):
    x = ir.leaf("X", (n, hh, ww), sp.Symbol("X"))
    read = _pool_read(x, k, stride, padding)
    # torch pads max pooling with -inf: the IR's zero padding equals it on positive inputs.
    biggest = ir.max_along(ir.max_along(read, 4), 3)
    mean = ir.einsum([read], [(0, 1, 2, 3, 4)], (0, 1, 2), sp.Rational(1, k * k))
    g = ir.leaf("G", biggest.shape, sp.Symbol("G"))
    h = ir.leaf("H", mean.shape, sp.Symbol("H"))
    loss = ir.add(ir.einsum([biggest, g], [(0, 1, 2, 3, 4)] * 2, ()),
                  ir.einsum([mean, h], [(0, 1, 2)] * 2, ()))
    grads, _ = autodiff.reverse(loss, [x])
    kern = Kernel({"max": biggest, "mean": mean, "grad:X": grads[id(x)]}, [x, g, h], "pool",
                  jit=False)
    # The window feeds the mean too: one scatter of the sum of both derivatives, which
    # multiplies by the masks of the maxima one axis after the other (still the first arg max).
    assert any(isinstance(s, RowMax) for s in _steps(kern))
    xv = RNG.integers(1, 4, size=(2, 7, 7)).astype(float)  # many ties
    out = (7 + 2 * padding - k) // stride + 1
    gv, hv = RNG.normal(size=(2, out, out, 1, 1)), RNG.normal(size=(2, out, out))
    got = kern(X=xv, G=gv, H=hv)
    xt = torch.tensor(xv[:, None], requires_grad=True)
    top = F.max_pool2d(xt, k, stride, padding)
    avg = F.avg_pool2d(xt, k, stride, padding)  # count_include_pad: divides by k*k
    ref = (top[:, 0] * torch.tensor(gv[..., 0, 0])).sum() + (avg[:, 0] * torch.tensor(hv)).sum()
    (gx,) = torch.autograd.grad(ref, (xt,))
    np.testing.assert_array_equal(got.outputs["max"][..., 0, 0], top.detach().numpy()[:, 0])
    np.testing.assert_allclose(got.outputs["mean"], avg.detach().numpy()[:, 0], rtol=1e-12)
    # The first maximum of each window takes the gradient, as in torch.
    np.testing.assert_allclose(got.grad["X"], gx.numpy()[:, 0], rtol=1e-12, atol=1e-14)
    # NaN as numpy.max (and torch): a NaN in a window is its maximum.
    xv[0, 1, 1] = np.nan
    nan = kern(X=xv, G=gv, H=hv)
    top = F.max_pool2d(torch.tensor(xv[:, None]), k, stride, padding).numpy()[:, 0]
    assert np.isnan(top).any()
    np.testing.assert_array_equal(nan.outputs["max"][..., 0, 0], top)


@pytest.fixture(scope="module")
def embedding():
    table = ir.leaf("E", (v, d), sp.Symbol("E"))
    idx = ir.leaf("idx", (n, t), sp.Symbol("idx"))
    g = ir.leaf("G", (n, t, d), sp.Symbol("G"))
    rows = ir.take(table, idx)
    sin = sp.Lambda(sp.Symbol("z"), sp.sin(sp.Symbol("z")))
    loss = ir.einsum([ir.map_(sin, rows), g], [(0, 1, 2)] * 2, ())
    grads, _ = autodiff.reverse(loss, [table])
    return Kernel({"value": loss, "grad:E": grads[id(table)]}, [table, idx, g], "embedding",
                  jit=False)


@pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_embedding_gathers_and_scatter_adds_like_torch(embedding, int_dtype, dtype):
    ev, gv = RNG.normal(size=(5, 3)), RNG.normal(size=(2, 4, 3))
    iv = np.array([[0, 4, 4, 1], [4, 2, 0, 0]])  # repeated rows add up
    got = embedding(E=ev.astype(dtype), idx=iv.astype(int_dtype), G=gv.astype(dtype))
    et = torch.tensor(ev, requires_grad=True)
    ref = (torch.sin(F.embedding(torch.tensor(iv), et)) * torch.tensor(gv)).sum()
    (ge,) = torch.autograd.grad(ref, (et,))
    np.testing.assert_allclose(got.value, ref.item(), **TOL[dtype])
    np.testing.assert_allclose(got.grad["E"], ge.numpy(), **TOL[dtype])


@pytest.mark.parametrize("bad,where", [(5, "idx[1, 2] = 5"), (-1, "idx[1, 2] = -1")])
def test_an_index_out_of_range_is_refused_before_any_loop(embedding, bad, where):
    iv = np.array([[0, 4, 4, 1], [4, 2, bad, 0]])
    args = dict(E=RNG.normal(size=(5, 3)), G=RNG.normal(size=(2, 4, 3)))
    with pytest.raises(KernelArgumentError, match=r"idx\[1, 2\] = .* outside 0 \.\. 4") as e:
        embedding(idx=iv, **args)
    assert where in str(e.value) and "5 rows" in str(e.value)
    # The generated module checks too (run_unchecked and exported modules skip Kernel's).
    with pytest.raises(ValueError, match=r"idx\[1, 2\] .* outside 0 \.\. 4"):
        embedding.run_unchecked([args["E"], args["G"], iv], [np.empty(1), np.empty((5, 3))])


def test_a_float_index_array_is_refused_with_the_fix(embedding):
    with pytest.raises(KernelArgumentError, match=r"idx .*integer array.*astype\(np.int64\)"):
        embedding(E=np.ones((5, 3)), idx=np.zeros((2, 4)), G=np.ones((2, 4, 3)))


def test_computed_positions_cannot_be_compiled():
    table = ir.leaf("E", (v, d), sp.Symbol("E"))
    idx = ir.leaf("idx", (n,), sp.Symbol("idx"))
    computed = ir.einsum([idx], [(0,)], (0,), 2)
    with pytest.raises(UnsupportedError, match="input array of integers"):
        Kernel({"value": ir.einsum([ir.take(table, computed)], [(0, 1)], ())},
               [table, idx], "gather", jit=False)


def test_row_split_keeps_a_convolution_per_row_and_refuses_a_window_across_rows():
    x = ir.leaf("X", (n, hh), sp.Symbol("X"))
    w = ir.leaf("W", (d,), sp.Symbol("W"))
    per_row = ir.affine_read(x, (n, ho, d), (AffineMap.axis(0, 3), AffineMap.of([0, 1, 1])))
    loss = ir.einsum([w, per_row], [(2,), (0, 1, 2)], ())
    assert _Analysis(n).info(loss).kind == "sum"
    across = ir.affine_read(x, (n, ho, d), (AffineMap.of([1, 0, 1]), AffineMap.axis(1, 3)))
    with pytest.raises(NotRowSeparableError, match="across the batch axis"):
        _Analysis(n).info(ir.einsum([w, across], [(2,), (0, 1, 2)], ()))
    pooled = ir.max_along(x, 0)  # a maximum over the batch couples every row
    with pytest.raises(NotRowSeparableError):
        _Analysis(n).info(ir.einsum([pooled], [(0, 1)], ()))


def test_hessian_vector_products_and_hessian_through_a_convolution_match_torch():
    c, o, k = 3, 4, 3
    x = ir.leaf("X", (n, c, hh), sp.Symbol("X"))
    w = ir.leaf("W", (o, c, k), sp.Symbol("W"))
    g = ir.leaf("G", (n, o, ho), sp.Symbol("G"))
    read = ir.affine_read(x, (n, c, ho, k), (AffineMap.axis(0, 4), AffineMap.axis(1, 4),
                                              AffineMap.of([0, 0, 2, 1], -1)))
    y = ir.einsum([w, read], [(4, 1, 3), (0, 1, 2, 3)], (0, 4, 2))
    loss = ir.einsum([ir.map_(TANH, y), g], [(0, 1, 2)] * 2, ())
    grads, _ = autodiff.reverse(loss, [x, w])
    vx, vw = ir.leaf("VX", x.shape, sp.Symbol("VX")), ir.leaf("VW", w.shape, sp.Symbol("VW"))
    seeds = {id(x): vx, id(w): vw}
    kern = Kernel({"hvp:X": autodiff.directional(grads[id(x)], seeds),
                   "hvp:W": autodiff.directional(grads[id(w)], seeds),
                   "hessian:W,W": autodiff.jacobian(grads[id(w)], w)},
                  [x, w, g, vx, vw], "conv1d curvature", jit=False)
    xv, wv, gv = RNG.normal(size=(2, c, 11)), RNG.normal(size=(o, c, k)), RNG.normal(size=(2, o, 6))
    dxv, dwv = RNG.normal(size=xv.shape), RNG.normal(size=wv.shape)
    got = kern(X=xv, W=wv, G=gv, VX=dxv, VW=dwv)

    def loss_t(xt, wt):
        return (torch.tanh(F.conv1d(xt, wt, stride=2, padding=1)) * torch.tensor(gv)).sum()

    xt, wt = torch.tensor(xv, requires_grad=True), torch.tensor(wv, requires_grad=True)
    gx, gw = torch.autograd.grad(loss_t(xt, wt), (xt, wt), create_graph=True)
    hx, hw = torch.autograd.grad((gx * torch.tensor(dxv)).sum() + (gw * torch.tensor(dwv)).sum(),
                                 (xt, wt))
    hessian = torch.autograd.functional.hessian(lambda wt: loss_t(torch.tensor(xv), wt),
                                                torch.tensor(wv))
    np.testing.assert_allclose(got.hvp["X"], hx.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.hvp["W"], hw.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.hessian[("W", "W")], hessian.numpy(), rtol=1e-10, atol=1e-12)


def test_the_exported_entry_point_takes_integer_index_arrays(embedding):
    from symdl.kernels.jit import load_interpreted

    module = load_interpreted(embedding.source)  # the exported module, run uncompiled
    ev, gv = RNG.normal(size=(5, 3)), RNG.normal(size=(2, 4, 3))
    iv = np.array([[0, 4, 4, 1], [4, 2, 0, 0]], dtype=np.int32)
    got = module.compute(E=ev, idx=iv, G=gv)
    want = embedding(E=ev, idx=iv, G=gv)
    np.testing.assert_array_equal(got["grad:E"], want.grad["E"])
    with pytest.raises(module.KernelArgumentError, match="integer array"):
        module.compute(E=ev, idx=iv.astype(float), G=gv)
    with pytest.raises(module.KernelArgumentError, match=r"idx\[0, 1\] = 7 is outside 0 \.\. 4"):
        module.compute(E=ev, idx=np.array([[0, 7, 4, 1], [4, 2, 0, 0]]), G=gv)


def test_a_small_cnn_step_conv_bias_relu_pool_conv_matches_torch():
    # Windows of computed tensors (relu's output, the pooled maxima), floor-divided sizes.
    c1, c2, k = 4, 6, 3
    z = sp.Symbol("z")
    x = ir.leaf("X", (n, 1, hh, hh), sp.Symbol("X"))
    w1, b1 = ir.leaf("W1", (c1, 1, k, k), sp.Symbol("W1")), ir.leaf("b1", (c1,), sp.Symbol("b1"))
    w2 = ir.leaf("W2", (c2, c1, k, k), sp.Symbol("W2"))

    def conv(inp, w, c_in, size):
        read = ir.affine_read(inp, (n, c_in, size, size, k, k), (
            AffineMap.axis(0, 6), AffineMap.axis(1, 6), AffineMap.of([0, 0, 1, 0, 1, 0], -1),
            AffineMap.of([0, 0, 0, 1, 0, 1], -1)))
        return ir.einsum([w, read], [(6, 1, 4, 5), (0, 1, 2, 3, 4, 5)], (0, 6, 2, 3))

    bias = ir.einsum([b1, ir.ones((n, c1, hh, hh))], [(1,), (0, 1, 2, 3)], (0, 1, 2, 3))
    a1 = ir.map_(sp.Lambda(z, sp.Max(z, 0)), ir.add(conv(x, w1, 1, hh), bias))
    half = sp.floor(hh / 2)
    windows = ir.affine_read(a1, (n, c1, half, half, 2, 2), (
        AffineMap.axis(0, 6), AffineMap.axis(1, 6), AffineMap.of([0, 0, 2, 0, 1, 0]),
        AffineMap.of([0, 0, 0, 2, 0, 1])))
    pooled = ir.einsum([ir.max_along(ir.max_along(windows, 5), 4), ir.ones((1, 1))],
                       [(0, 1, 2, 3, 4, 5), (4, 5)], (0, 1, 2, 3))
    loss = ir.einsum([ir.map_(TANH, conv(pooled, w2, c1, half))], [(0, 1, 2, 3)], ())
    grads, _ = autodiff.reverse(loss, [w1, b1, w2])
    kern = Kernel({"value": loss, **{f"grad:{p.name}": grads[id(p)] for p in (w1, b1, w2)}},
                  [x, w1, b1, w2], "cnn", jit=False)
    xv, w1v, b1v = RNG.normal(size=(3, 1, 9, 9)), RNG.normal(size=(c1, 1, k, k)), RNG.normal(
        size=c1)
    w2v = RNG.normal(size=(c2, c1, k, k))
    got = kern(X=xv, W1=w1v, b1=b1v, W2=w2v)
    params = [torch.tensor(a, requires_grad=True) for a in (w1v, b1v, w2v)]
    first = torch.relu(F.conv2d(torch.tensor(xv), params[0], params[1], padding=1))
    ref = torch.tanh(F.conv2d(F.max_pool2d(first, 2), params[2], padding=1)).sum()
    grads_t = torch.autograd.grad(ref, params)
    np.testing.assert_allclose(got.value, ref.item(), rtol=1e-10)
    for name, want in zip(("W1", "b1", "W2"), grads_t, strict=True):
        np.testing.assert_allclose(got.grad[name], want.numpy(), rtol=1e-10, atol=1e-12)


def test_padded_max_pool2d_of_the_vocabulary_scatters_through_the_stored_index():
    """``symdl.max_pool2d(X, 3, stride=2, padding=1)`` (channels last), negative entries and
    ties: the padding never wins, the first maximum takes the gradient (torch's)."""
    c = sp.Symbol("c", integer=True, positive=True)
    X = sp.IndexedBase("X", shape=(n, 5, 5, c))
    G = sp.IndexedBase("G", shape=(n, 3, 3, c))
    P = sp.IndexedBase("P", shape=(n, 3, 3, c))
    b, i, j, q = sp.symbols("b i j q", integer=True)
    der = symdl.derive([(P, symdl.max_pool2d(X, 3, stride=2, padding=1)),
                        (sp.Symbol("L"), sp.Sum(G[b, i, j, q] * P[b, i, j, q], (b, 0, n - 1),
                                                (i, 0, 2), (j, 0, 2), (q, 0, c - 1)))],
                       wrt=[X])
    kern = der.compile(jit=False)
    _assert_one_pass_pooling(kern, axes=(4, 5))
    xv = -RNG.integers(1, 3, size=(2, 5, 5, 2)).astype(float)  # negative, many ties
    gv = RNG.normal(size=(2, 3, 3, 2))
    got = kern(X=xv, G=gv)
    xt = torch.tensor(xv, requires_grad=True)
    top = F.max_pool2d(xt.permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)
    ref = (top * torch.tensor(gv)).sum()
    (gx,) = torch.autograd.grad(ref, (xt,))
    assert got.value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(got.grad["X"], gx.numpy(), rtol=1e-12, atol=1e-14)
