"""The tensor vocabulary (symdl.define.tensors) and rank-n named steps, against PyTorch.

Values and gradients through ``Derivation.evaluate`` (the IR, no kernel compiled) against
``torch.nn.functional`` autograd in float64, to 1e-10; wrong input gets typed errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import ir
from symdl.errors import DefinitionError, ShapeMismatchError
from symdl.ir.evaluate import evaluate

torch = pytest.importorskip("torch")
F = torch.nn.functional

n = sp.Symbol("n", integer=True, positive=True)
L = sp.Symbol("L")
RNG = np.random.default_rng(13)


def _weighted(step_symbol: sp.IndexedBase, shape: tuple) -> tuple[sp.Basic, sp.MatrixSymbol]:
    """sum(G ⊙ flatten(Y)): a scalar whose gradients are the layer's backward pass."""
    g = sp.MatrixSymbol("G", n, sp.Mul(*shape[1:]))
    return symdl.total(sp.hadamard_product(g, symdl.flatten(step_symbol))), g


def _check(der, values: dict, ref: torch.Tensor, leaves: dict, names: dict) -> None:
    """``der`` (value and gradients) against torch: ``ref`` the scalar built from ``leaves``
    (torch tensors by name), ``names`` symdl name -> (torch name, array transform)."""
    out = der.evaluate(values)
    grads = torch.autograd.grad(ref, [leaves[t] for t, _ in names.values()])
    np.testing.assert_allclose(out["value"], ref.item(), rtol=1e-10)
    for (name, (_, to_symdl)), grad in zip(names.items(), grads, strict=True):
        np.testing.assert_allclose(out[f"grad:{name}"], to_symdl(grad.numpy()), rtol=1e-10,
                                   atol=1e-12, err_msg=name)


LAST = (0, 2, 3, 1)  # N C H W -> N H W C
CONV2D = [("channels_first", 1, 0, 1, 1), ("channels_last", 2, 1, 1, 2),
          ("channels_first", (1, 2), (2, 1), (2, 1), 4), ("channels_last", 1, 2, 2, 4)]


@pytest.mark.parametrize("layout,stride,padding,dilation,groups", CONV2D)
def test_conv2d_values_and_gradients_match_torch(layout, stride, padding, dilation, groups):
    c, o, h, w = 4, 8, 7, 6
    last = layout == "channels_last"
    X = sp.IndexedBase("X", shape=(n, h, w, c) if last else (n, c, h, w))
    K = sp.IndexedBase("K", shape=(3, 3, c // groups, o) if last else (o, c // groups, 3, 3))
    bias = sp.IndexedBase("bias", shape=(o,))
    conv = symdl.channel_bias(symdl.conv2d(X, K, stride, padding, dilation, groups, layout),
                              bias, layout)
    Y = sp.IndexedBase("Y", shape=conv.shape)
    A = sp.IndexedBase("A", shape=conv.shape)
    loss, _ = _weighted(A, conv.shape)
    der = symdl.derive([(Y, conv), (A, symdl.tanh(Y)), (L, loss)], wrt=[X, K, bias])

    xv, kv, bv = RNG.normal(size=(2, c, h, w)), RNG.normal(size=(o, c // groups, 3, 3)), \
        RNG.normal(size=o)
    t = {"X": torch.tensor(xv, requires_grad=True), "K": torch.tensor(kv, requires_grad=True),
         "b": torch.tensor(bv, requires_grad=True)}
    y = torch.tanh(F.conv2d(t["X"], t["K"], t["b"], stride, padding, dilation, groups))
    y = y.permute(*LAST) if last else y
    gv = RNG.normal(size=(2, int(np.prod(y.shape[1:]))))
    ref = (y.reshape(2, -1) * torch.tensor(gv)).sum()
    x_to = (lambda a: a.transpose(*LAST)) if last else (lambda a: a)
    k_to = (lambda a: a.transpose(2, 3, 1, 0)) if last else (lambda a: a)
    _check(der, {"X": x_to(xv), "K": k_to(kv), "bias": bv, "G": gv}, ref, t,
           {"X": ("X", x_to), "K": ("K", k_to), "bias": ("b", lambda a: a)})


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_conv1d_matches_torch(layout):
    c, o, length = 3, 2, 9
    last = layout == "channels_last"
    X = sp.IndexedBase("X", shape=(n, length, c) if last else (n, c, length))
    W = sp.IndexedBase("W", shape=(3, c, o) if last else (o, c, 3))
    conv = symdl.conv1d(X, W, stride=2, padding=1, dilation=2, layout=layout)
    Y = sp.IndexedBase("Y", shape=conv.shape)
    loss, _ = _weighted(Y, conv.shape)
    der = symdl.derive([(Y, conv), (L, loss)], wrt=[X, W])
    xv, wv = RNG.normal(size=(2, c, length)), RNG.normal(size=(o, c, 3))
    t = {"X": torch.tensor(xv, requires_grad=True), "W": torch.tensor(wv, requires_grad=True)}
    y = F.conv1d(t["X"], t["W"], stride=2, padding=1, dilation=2)
    y = y.permute(0, 2, 1) if last else y
    gv = RNG.normal(size=(2, int(np.prod(y.shape[1:]))))
    ref = (y.reshape(2, -1) * torch.tensor(gv)).sum()
    x_to = (lambda a: a.transpose(0, 2, 1)) if last else (lambda a: a)
    w_to = (lambda a: a.transpose(2, 1, 0)) if last else (lambda a: a)
    _check(der, {"X": x_to(xv), "W": w_to(wv), "G": gv}, ref, t,
           {"X": ("X", x_to), "W": ("W", w_to)})


POOLS = [("max", "channels_last", 2, None, 0), ("max", "channels_first", 3, 2, 1),
         ("max", "channels_last", (3, 2), (1, 2), 1), ("avg", "channels_first", 2, None, 0),
         ("avg", "channels_last", 3, 2, 1), ("avg", "channels_first", (3, 2), (1, 2), 1)]


@pytest.mark.parametrize("kind,layout,kernel,stride,padding", POOLS)
def test_pooling_matches_torch_on_ties_and_negative_windows(kind, layout, kernel, stride,
                                                            padding):
    # Integers in -3 .. 1: many ties (the first arg max wins) and all-negative windows (a
    # padded entry must not win a max: PyTorch pads with -inf).
    c, h, w = 2, 7, 6
    last = layout == "channels_last"
    X = sp.IndexedBase("X", shape=(n, h, w, c) if last else (n, c, h, w))
    pool = (symdl.max_pool2d if kind == "max" else symdl.avg_pool2d)(X, kernel, stride,
                                                                      padding, layout)
    P = sp.IndexedBase("P", shape=pool.shape)
    loss, _ = _weighted(P, pool.shape)
    der = symdl.derive([(P, pool), (L, loss)], wrt=[X])
    xv = RNG.integers(-3, 2, size=(2, c, h, w)).astype(float)
    t = {"X": torch.tensor(xv, requires_grad=True)}
    y = (F.max_pool2d if kind == "max" else F.avg_pool2d)(t["X"], kernel, stride, padding)
    y = y.permute(*LAST) if last else y
    gv = RNG.normal(size=(2, int(np.prod(y.shape[1:]))))
    ref = (y.reshape(2, -1) * torch.tensor(gv)).sum()
    x_to = (lambda a: a.transpose(*LAST)) if last else (lambda a: a)
    _check(der, {"X": x_to(xv), "G": gv}, ref, t, {"X": ("X", x_to)})


def test_embedding_gathers_and_its_gradient_scatter_adds_like_torch():
    v, d, k = 5, 3, 2
    E, W = sp.MatrixSymbol("E", v, d), sp.MatrixSymbol("W", d, k)
    idx = sp.IndexedBase("idx", shape=(n,))
    der = symdl.derive(symdl.total(symdl.tanh(symdl.embedding(E, idx) * W)), wrt=[E, W])
    ev, wv, iv = RNG.normal(size=(v, d)), RNG.normal(size=(d, k)), np.array([0, 4, 4, 1])
    t = {"E": torch.tensor(ev, requires_grad=True), "W": torch.tensor(wv, requires_grad=True)}
    ref = torch.tanh(F.embedding(torch.tensor(iv), t["E"]) @ t["W"]).sum()
    _check(der, {"E": ev, "W": wv, "idx": iv}, ref, t,
           {"E": ("E", lambda a: a), "W": ("W", lambda a: a)})


def test_embedding_of_an_index_matrix_is_a_rank_3_tensor():
    E = sp.MatrixSymbol("E", 7, 4)
    idx = sp.IndexedBase("idx", shape=(n, 3))
    assert symdl.embedding(E, idx).shape == (n, 3, 4)


def test_flatten_unflatten_and_max_along_match_numpy():
    M = sp.MatrixSymbol("M", n, 12)
    T = sp.IndexedBase("T", shape=(n, 2, 3, 2))
    Tm = sp.IndexedBase("Tm", shape=(n, 2, 1, 2))
    mv = RNG.normal(size=(3, 12))
    der = symdl.derive([(T, symdl.unflatten(M, (2, 3, 2))), (Tm, symdl.max_along(T, 2)),
                        (L, symdl.total(symdl.flatten(Tm)))], wrt=[M])
    out = der.evaluate({"M": mv})
    blocks = mv.reshape(3, 2, 3, 2)
    np.testing.assert_allclose(out["value"], blocks.max(axis=2).sum(), rtol=1e-12)
    first = (blocks == blocks.max(axis=2, keepdims=True)).astype(float)
    np.testing.assert_array_equal(out["grad:M"], first.reshape(3, 12))


def test_entrywise_tensor_steps_are_read_by_index_in_later_steps():
    # Y[b, i, j] defined entrywise, then read in index notation and passed to the vocabulary.
    X = sp.IndexedBase("X", shape=(n, 4, 4, 1))
    Y = sp.IndexedBase("Y", shape=(n, 4, 4, 1))
    P = sp.IndexedBase("P", shape=(n, 2, 2, 1))
    b, i, j, c = sp.symbols("b i j c", integer=True)
    der = symdl.derive([(Y[b, i, j, c], sp.sin(X[b, i, j, c]) * X[b, i, j, c]),
                        (P, symdl.max_pool2d(Y, 2)),
                        (L, sp.Sum(P[b, i, j, c] ** 2, (b, 0, n - 1), (i, 0, 1), (j, 0, 1),
                                   (c, 0, 0)))], wrt=[X])
    xv = RNG.normal(size=(2, 4, 4, 1))
    xt = torch.tensor(xv.transpose(*np.argsort(LAST)), requires_grad=True)
    ref = (F.max_pool2d(torch.sin(xt) * xt, 2) ** 2).sum()
    (gx,) = torch.autograd.grad(ref, (xt,))
    out = der.evaluate({"X": xv})
    np.testing.assert_allclose(out["value"], ref.item(), rtol=1e-12)
    np.testing.assert_allclose(out["grad:X"], gx.numpy().transpose(*LAST), rtol=1e-12)


def test_hessian_vector_product_through_a_convolution_matches_finite_differences():
    X = sp.IndexedBase("X", shape=(n, 5, 5, 2))
    K = sp.IndexedBase("K", shape=(3, 3, 2, 2))
    Y = sp.IndexedBase("Y", shape=(n, 3, 3, 2))
    V = sp.IndexedBase("V", shape=(3, 3, 2, 2))
    der = symdl.derive([(Y, symdl.tanh(symdl.conv2d(X, K))),
                        (L, symdl.total(sp.HadamardPower(symdl.flatten(Y), 2)))], wrt=[K])
    xv, kv, vv = (RNG.normal(size=s) for s in ((2, 5, 5, 2), (3, 3, 2, 2), (3, 3, 2, 2)))
    direction = ir.leaf("V", V.shape, V)
    (hvp,) = evaluate([der.hvp_node(K, {K: direction})], {"X": xv, "K": kv, "V": vv}, {n: 2})
    step = 1e-5
    grad = [der.evaluate({"X": xv, "K": kv + s * vv})["grad:K"] for s in (step, -step)]
    np.testing.assert_allclose(hvp, (grad[0] - grad[1]) / (2 * step), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("build,error,match", [
    (lambda X, K: symdl.conv2d(X, K, groups=3), ShapeMismatchError, "groups"),
    (lambda X, K: symdl.conv2d(X, K, layout="NHWC"), DefinitionError, "channels_last"),
    (lambda X, K: symdl.conv2d(X, K, stride=0), DefinitionError, "stride"),
    (lambda X, K: symdl.conv2d(X, sp.IndexedBase("W"), padding=1), DefinitionError, "shape"),
    (lambda X, K: symdl.max_pool2d(X, 2, padding=2), DefinitionError, "half the window"),
    (lambda X, K: symdl.conv2d(X, sp.IndexedBase("W", shape=(9, 9, 4, 2))),
     ShapeMismatchError, "empty"),
    (lambda X, K: symdl.embedding(sp.MatrixSymbol("E", 5, 2), "idx"), DefinitionError,
     "IndexedBase of integers"),
    (lambda X, K: symdl.unflatten(sp.MatrixSymbol("M", n, 10), (3, 3)), ShapeMismatchError,
     "rows of shape"),
])
def test_bad_tensor_definitions_get_typed_errors(build, error, match):
    X = sp.IndexedBase("X", shape=(n, 6, 6, 4))
    K = sp.IndexedBase("K", shape=(3, 3, 4, 2))
    with pytest.raises(error, match=match):
        build(X, K)


def test_a_tensor_step_must_be_declared_with_its_shape():
    X = sp.IndexedBase("X", shape=(n, 6, 6, 1))
    K = sp.IndexedBase("K", shape=(3, 3, 1, 2))
    wrong = sp.IndexedBase("Y", shape=(n, 6, 6, 2))
    with pytest.raises(ShapeMismatchError, match=r"declared with shape"):
        symdl.derive([(wrong, symdl.conv2d(X, K)),
                      (L, symdl.total(symdl.flatten(wrong)))], wrt=[K])
    with pytest.raises(DefinitionError, match="IndexedBase with that shape"):
        symdl.derive([(sp.Symbol("Y"), symdl.conv2d(X, K)), (L, sp.Symbol("Y"))], wrt=[K])
    b, i = sp.symbols("b i", integer=True)
    X2 = sp.IndexedBase("X2", shape=(n, 3))
    with pytest.raises(DefinitionError, match="free indices"):
        symdl.derive([(sp.IndexedBase("Z", shape=(n,))[b], X2[b, i]),
                      (L, sp.Symbol("q", real=True))], wrt=[X2])


def test_hvp_takes_an_indexed_base_direction():
    # der.hvp(p, V) with V an IndexedBase shaped like p was refused ("the direction for w has
    # shape ()"): only matrix directions were measured.
    i = sp.Symbol("i", integer=True)
    w = sp.IndexedBase("w", shape=(3,))
    V = sp.IndexedBase("V", shape=(3,))
    der = symdl.derive(sp.Sum(w[i] ** 3, (i, 0, 2)), wrt=[w])
    wv, vv = np.array([1.0, -2.0, 0.5]), np.array([0.3, 1.0, -1.0])
    got = symdl.evaluate(der.hvp(w, V), {"w": wv, "V": vv}, {})
    np.testing.assert_allclose(np.ravel(got), 6 * wv * vv, rtol=1e-14)
