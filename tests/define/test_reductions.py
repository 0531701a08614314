"""Reductions along any axis of a rank-n tensor, in index notation (issue 14, item 2).

``symdl.softmax/logsumexp/log_softmax/sum/mean/variance(expr, axis=index)`` on an
``IndexedBase`` of rank 3, along each of its axes: values and gradients against PyTorch
autograd (the oracle), masks of ``-inf`` (finite wherever a lane has a finite entry; a lane of
only ``-inf``: softmax zeros, logsumexp ``-inf``, zero gradients), one compiled kernel, the
forward rules (Hessian-vector products) by ``symdl.check``, and typed errors for bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl import ir

A, Bd, C = sp.symbols("A B C", integer=True, positive=True)
a, b, c = sp.symbols("a b c", integer=True)
X = sp.IndexedBase("X", shape=(A, Bd, C))
G = sp.IndexedBase("G", shape=(A, Bd, C))
INDEX = (a, b, c)
SIZES = {A: 3, Bd: 4, C: 5}

# name -> (symdl's reduction of X[a, b, c] along an index, torch's along a dim, keeps it)
REDUCTIONS = {
    "softmax": (symdl.softmax, lambda x, k: torch.softmax(x, k), True),
    "log_softmax": (symdl.log_softmax, lambda x, k: torch.log_softmax(x, k), True),
    "logsumexp": (symdl.logsumexp, lambda x, k: torch.logsumexp(x, k), False),
    "sum": (symdl.sum, lambda x, k: x.sum(k), False),
    "mean": (symdl.mean, lambda x, k: x.mean(k), False),
    "variance": (symdl.variance, lambda x, k: x.var(k, unbiased=False), False),
}


def _loss(name: str, axis: int) -> tuple[sp.Expr, tuple]:
    """Σ G ⊙ f(X) over the entries f keeps: its gradient is f's backward pass."""
    reduce, _, keeps = REDUCTIONS[name]
    value = reduce(X[a, b, c], axis=INDEX[axis])
    kept = INDEX if keeps else tuple(i for k, i in enumerate(INDEX) if k != axis)
    reduced = sp.IndexedBase("Gr", shape=tuple(SIZES_SYMBOLS[i] for i in kept))
    upstream = G[a, b, c] if keeps else reduced[kept]
    limits = [(i, 0, SIZES_SYMBOLS[i] - 1) for i in kept]
    return sp.Sum(upstream * value, *limits), kept


SIZES_SYMBOLS = {a: A, b: Bd, c: C}


def _torch(name: str, axis: int, x: np.ndarray, g: np.ndarray) -> tuple[float, np.ndarray]:
    _, reduce, keeps = REDUCTIONS[name]
    xt = torch.tensor(x, requires_grad=True)
    out = reduce(xt, axis)
    gt = torch.tensor(g if keeps else _reduced_upstream(g, axis))
    # A masked entry's log-probability is -inf; an upstream 0 there contributes 0 (torch's
    # own 0 * -inf is NaN), as a label of 0 ignores its logit in a cross-entropy.
    objective = torch.where(gt == 0, 0.0, gt * out).sum()
    objective.backward()
    return objective.item(), xt.grad.numpy()


def _reduced_upstream(g: np.ndarray, axis: int) -> np.ndarray:
    return np.take(g, 0, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_along_each_axis_matches_torch(name, axis):
    loss, _ = _loss(name, axis)
    der = symdl.derive(loss, wrt=[X])
    rng = np.random.default_rng(axis)
    values = {"X": rng.normal(size=(3, 4, 5)), "G": rng.normal(size=(3, 4, 5))}
    values["Gr"] = _reduced_upstream(values["G"], axis)
    out = der.evaluate(values, SIZES)
    want, grad = _torch(name, axis, values["X"], values["G"])
    np.testing.assert_allclose(out["value"], want, rtol=1e-12)
    np.testing.assert_allclose(out["grad:X"], grad, rtol=1e-10, atol=1e-12)


def _masked_lanes(axis: int) -> np.ndarray:
    """-inf on most entries of every lane along ``axis``, one finite entry kept in each."""
    x = np.random.default_rng(9).normal(size=(3, 4, 5)) * 100.0
    keep = np.random.default_rng(10).random(x.shape) < 0.3
    first = [slice(None)] * 3
    first[axis] = 0
    keep[tuple(first)] = True
    return np.where(keep, x, -np.inf)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_masked_entries_give_finite_values_and_gradients(name, axis):
    loss, _ = _loss(name, axis)
    if name == "log_softmax":  # -inf at masked entries is its value: sum the kept ones
        loss = loss.xreplace({G: sp.IndexedBase("Gk", shape=(A, Bd, C))})
    der = symdl.derive(loss, wrt=[X])
    x = _masked_lanes(axis)
    g = np.random.default_rng(11).normal(size=x.shape)
    g = np.where(np.isfinite(x), g, 0.0) if name == "log_softmax" else g
    values = {"X": x, "G": g, "Gk": g, "Gr": _reduced_upstream(g, axis)}
    out = der.evaluate(values, SIZES)
    assert np.isfinite(out["value"]) and np.all(np.isfinite(out["grad:X"]))
    want, grad = _torch(name, axis, x, g)
    np.testing.assert_allclose(out["value"], want, rtol=1e-12)
    np.testing.assert_allclose(out["grad:X"], grad, rtol=1e-10, atol=1e-12)


def test_a_lane_of_only_minus_inf():
    """softmax: zeros (torch: NaN); logsumexp: -inf (log 0, as torch); gradients 0."""
    x = np.random.default_rng(12).normal(size=(3, 4, 5))
    x[1, :, 2] = -np.inf  # the lane along b at (a, c) = (1, 2)
    p = ir.softmax(ir.leaf("X", (A, Bd, C), X), 1)
    lse = ir.logsumexp(ir.leaf("X", (A, Bd, C), X), 1)
    from symdl.ir.evaluate import evaluate

    probs, logs = evaluate([p, lse], {"X": x}, SIZES)
    assert np.all(probs[1, :, 2] == 0.0) and logs[1, 0, 2] == -np.inf
    np.testing.assert_allclose(np.delete(probs.sum(axis=1), 2, axis=1)[1], 1.0)
    der = symdl.derive(_loss("softmax", 1)[0], wrt=[X])
    out = der.evaluate({"X": x, "G": np.ones_like(x)}, SIZES)
    assert np.all(out["grad:X"][1, :, 2] == 0.0) and np.all(np.isfinite(out["grad:X"]))


def _mixed():
    """One loss with a softmax along the middle axis (lanes strided in memory), a logsumexp
    along the first, an additive mask of -inf: one kernel covers the rank-3 lane code."""
    M = sp.IndexedBase("M", shape=(A, Bd, C))
    H = sp.IndexedBase("H", shape=(Bd, C))
    P = sp.IndexedBase("P", shape=(A, Bd, C))
    Lse = sp.IndexedBase("Lse", shape=(Bd, C))
    steps = [
        (P[a, b, c], symdl.softmax(X[a, b, c], axis=b, mask=M[a, b, c])),
        (Lse[b, c], symdl.logsumexp(X[a, b, c], axis=a)),
        (sp.Symbol("L"), sp.Sum(G[a, b, c] * P[a, b, c], (a, 0, A - 1), (b, 0, Bd - 1),
                                (c, 0, C - 1))
         + sp.Sum(H[b, c] * Lse[b, c], (b, 0, Bd - 1), (c, 0, C - 1))),
    ]
    return symdl.derive(steps, wrt=[X])


def _mixed_values(rng):
    mask = np.where(rng.random((3, 4, 5)) < 0.3, -np.inf, 0.0)
    mask[:, 0, :] = 0.0
    return {"X": rng.normal(size=(3, 4, 5)) * 50, "M": mask, "G": rng.normal(size=(3, 4, 5)),
            "H": rng.normal(size=(4, 5))}


def test_rank3_softmax_and_logsumexp_kernel_matches_torch():
    # Interpreted (jit=False): the same generated source; the jitted lane statistics are
    # compiled by the multi-head attention tests (tests/end_to_end/test_layer_derivations).
    kernel = _mixed().compile(jit=False)
    values = _mixed_values(np.random.default_rng(13))
    t = {k: torch.tensor(v) for k, v in values.items()}
    x = t["X"].requires_grad_(True)
    objective = ((t["G"] * torch.softmax(x + t["M"], 1)).sum()
                 + (t["H"] * torch.logsumexp(x, 0)).sum())
    objective.backward()
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        result = kernel(**{k: v.astype(dtype) for k, v in values.items()})
        np.testing.assert_allclose(result.value, objective.item(), rtol=rtol)
        np.testing.assert_allclose(result.grad["X"], x.grad.numpy(), rtol=rtol,
                                   atol=rtol * np.abs(x.grad.numpy()).max())


def test_rank3_reductions_pass_check_with_hessian_vector_products():
    report = symdl.check(_mixed(), jit=False, dims={A: 2, Bd: 3, C: 2},
                         sample_inputs=lambda rng, dims: {"M": np.zeros((2, 3, 2))})
    assert report.ok, str(report)


def test_bad_reductions_are_typed_errors():
    S = sp.IndexedBase("S", shape=(A, Bd))
    with pytest.raises(symdl.DefinitionError, match=r"index it.*axis=t"):
        symdl.softmax(S, axis=1)
    with pytest.raises(symdl.DefinitionError, match="not a free index"):
        symdl.softmax(S[a, b], axis=c)
    with pytest.raises(symdl.DefinitionError, match="axis= an index symbol"):
        symdl.logsumexp(S[a, b], axis=1)
    with pytest.raises(symdl.DefinitionError, match="range of the index"):
        symdl.mean(sp.IndexedBase("U")[a], axis=a)
    with pytest.raises(symdl.ShapeMismatchError, match="axis 3 of a tensor of rank 3"):
        ir.softmax(ir.leaf("X", (A, Bd, C), X), 3)
    Q = sp.IndexedBase("Q", shape=(A, Bd))
    with pytest.raises(symdl.DefinitionError, match="free indices"):
        symdl.derive([(Q[a, b], X[a, b, c])], wrt=[X])
    with pytest.raises(symdl.ShapeMismatchError, match="runs over C in the .* over B"):
        symdl.derive([(Q[a, c], sp.Sum(X[a, b, c], (b, 0, Bd - 1)))], wrt=[X])
    with pytest.raises(symdl.DefinitionError, match="distinct index symbols"):
        symdl.derive([(Q[a, a], X[a, a, 0])], wrt=[X])


def test_index_notation_steps_print_and_typeset_readably():
    der = _mixed()
    text = {str(lhs): str(rhs) for lhs, rhs in der.definitions()}
    assert text["P[a, b, c]"] == "softmax(M[a, b, c] + X[a, b, c], axis=b)"
    assert text["Lse[b, c]"] == "logsumexp(X[a, b, c], axis=a)"
    tex = der.to_latex()
    assert r"P_{a b c} &= \operatorname{softmax}_{b}\left(M_{a b c} + X_{a b c}\right)" in tex
    assert r"A \times B \times C" in tex


def test_a_fully_masked_matrix_row_is_zeros_in_kernels_and_evaluation():
    """The matrix softmax follows the same convention (it gave 0/0 = NaN in both)."""
    n, k = sp.symbols("n k", integer=True, positive=True)
    Z, Gm = sp.MatrixSymbol("Z", n, k), sp.MatrixSymbol("G", n, k)
    der = symdl.derive(symdl.total(sp.hadamard_product(Gm, symdl.softmax(Z))), wrt=[Z])
    z = np.random.default_rng(14).normal(size=(3, 4))
    z[1] = -np.inf
    g = np.random.default_rng(15).normal(size=(3, 4))
    p = np.exp(z[[0, 2]] - z[[0, 2]].max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want_value = np.sum(g[[0, 2]] * p)
    want_grad = np.zeros_like(z)
    want_grad[[0, 2]] = p * (g[[0, 2]] - np.sum(p * g[[0, 2]], axis=1, keepdims=True))
    out = der.evaluate({"Z": z, "G": g})
    result = der.compile(jit=False)(Z=z, G=g)
    for value, grad in ((out["value"], out["grad:Z"]), (result.value, result.grad["Z"])):
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fix", ["xreplace", "subs"])
def test_a_softmax_entry_at_a_fixed_position_still_normalises_over_its_lane(fix):
    # Writing a sum out term by term fixes the softmax's index (k -> 0): the entry at that
    # position, not a softmax whose lane lost track of which positions it runs over (it
    # printed a loop variable named "0", and an S[0] elsewhere in the lane moved with it).
    from symdl.define.reductions import LogSumExpAlong, SoftmaxAlong

    k = sp.Symbol("k", integer=True)
    S = sp.IndexedBase("S", shape=(4,))
    entry = SoftmaxAlong(S[k] + S[0] * S[k], k)
    v = np.array([0.5, -1.0, 2.0, 0.25])
    z = v + v[0] * v
    want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    for j in range(4):
        fixed = entry.xreplace({k: sp.Integer(j)}) if fix == "xreplace" else entry.subs(k, j)
        got = sp.lambdify([S], fixed, modules="numpy")(v)
        assert got == pytest.approx(want[j], rel=1e-14)
    # A log-sum-exp's index is bound: fixing it changes nothing; renaming keeps the softmax.
    lse = LogSumExpAlong(S[k], k)
    assert lse.xreplace({k: sp.Integer(1)}) == lse and lse.subs(k, 2) == lse
    m = sp.Symbol("m", integer=True)
    assert entry.xreplace({k: m}) == SoftmaxAlong(S[m] + S[0] * S[m], m)
