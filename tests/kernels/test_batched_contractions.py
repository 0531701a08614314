"""Products of tensors of rank 3 and more become BLAS matrix products
(``symdl.kernels.steps.BatchedContraction``), not scalar loop nests: one GEMM when the
product is a matrix product after a reshape, a loop of GEMMs over the batch labels otherwise,
with operands permuted where no view fits. Each definition is checked against PyTorch
autograd on ``torch.einsum`` (the oracle), in float64 and float32, at sizes where every
dimension differs (a transposed axis cannot go unnoticed), and once with a dimension of 1.
The kernels run interpreted (``jit=False``: the same generated source, no Numba compile).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl import ir
from symdl.kernels.plan import LoopGroup, plan
from symdl.kernels.steps import BatchedContraction

B, T, H, D, C, J, K = sp.symbols("B T H D C J K", integer=True, positive=True)
b, t, s, h, e, i, j, k = sp.symbols("b t s h e i j k", integer=True)


def _per_head_scores():
    """Attention scores with the heads after the sequence (PyTorch's layout before its
    transpose): S[b,h,i,j] = Σ_e Q[b,i,h,e] K[b,j,h,e]. The batch labels (b, h) are not
    leading in Q and K: each is permuted by one copy."""
    q = sp.IndexedBase("Q", shape=(B, T, H, D))
    kk = sp.IndexedBase("K", shape=(B, T, H, D))
    g = sp.IndexedBase("G", shape=(B, H, T, T))
    out = sp.IndexedBase("S", shape=(B, H, T, T))
    layer = [(out[b, h, i, j], sp.Sum(q[b, i, h, e] * kk[b, j, h, e], (e, 0, D - 1))),
             (sp.Symbol("L"), sp.Sum(g[b, h, i, j] * out[b, h, i, j], (b, 0, B - 1),
                                     (h, 0, H - 1), (i, 0, T - 1), (j, 0, T - 1)))]
    return layer, [q, kk], "bthd,bshd->bhts", ("Q", "K")


def _projection():
    """A projection by a rank-3 weight: Q[b,h,t,e] = Σ_i X[b,t,i] W[i,h,e], one GEMM of
    (b·t) x i by i x (h·e), its result permuted into (b, h, t, e)."""
    x = sp.IndexedBase("X", shape=(B, T, C))
    w = sp.IndexedBase("W", shape=(C, H, D))
    g = sp.IndexedBase("G", shape=(B, H, T, D))
    out = sp.IndexedBase("Y", shape=(B, H, T, D))
    layer = [(out[b, h, t, e], sp.Sum(x[b, t, i] * w[i, h, e], (i, 0, C - 1))),
             (sp.Symbol("L"), sp.Sum(g[b, h, t, e] * out[b, h, t, e], (b, 0, B - 1),
                                     (h, 0, H - 1), (t, 0, T - 1), (e, 0, D - 1)))]
    return layer, [x, w], "bti,ihd->bhtd", ("X", "W")


def _two_summed():
    """An einsum summed over two indices held in different orders by the operands:
    Y[i,k] = Σ_{j,e} X[i,j,e] W[e,j,k]."""
    x = sp.IndexedBase("X", shape=(C, J, D))
    w = sp.IndexedBase("W", shape=(D, J, K))
    g = sp.IndexedBase("G", shape=(C, K))
    out = sp.IndexedBase("Y", shape=(C, K))
    layer = [(out[i, k], sp.Sum(x[i, j, e] * w[e, j, k], (j, 0, J - 1), (e, 0, D - 1))),
             (sp.Symbol("L"), sp.Sum(g[i, k] * out[i, k], (i, 0, C - 1), (k, 0, K - 1)))]
    return layer, [x, w], "ijd,djk->ik", ("X", "W")


def _batched_bilinear():
    """A bilinear form over a batch (torch.nn.Bilinear without bias):
    y[b,k] = Σ_{i,j} x[b,i] W[k,i,j] z[b,j], as the outer products x ⊗ z (a loop) then
    products summed over (i, j) with W: GEMMs, W permuted where its summed axes are split."""
    x = sp.IndexedBase("x", shape=(B, C))
    w = sp.IndexedBase("W", shape=(K, C, J))
    z = sp.IndexedBase("z", shape=(B, J))
    g = sp.IndexedBase("G", shape=(B, K))
    out = sp.IndexedBase("y", shape=(B, K))
    layer = [(out[b, k], sp.Sum(x[b, i] * w[k, i, j] * z[b, j], (i, 0, C - 1),
                                (j, 0, J - 1))),
             (sp.Symbol("L"), sp.Sum(g[b, k] * out[b, k], (b, 0, B - 1), (k, 0, K - 1)))]
    return layer, [x, w, z], "bi,kij,bj->bk", ("x", "W", "z")


DEFINITIONS = {"per_head_scores": _per_head_scores, "projection": _projection,
               "two_summed": _two_summed, "batched_bilinear": _batched_bilinear}
SIZES = {B: 3, T: 4, H: 2, D: 5, C: 6, J: 7, K: 8}


@pytest.fixture(scope="module", params=sorted(DEFINITIONS))
def case(request):
    layer, params, spec, names = DEFINITIONS[request.param]()
    der = symdl.derive(layer, wrt=params)
    return request.param, der, spec, names


def _inputs(der: symdl.Derivation, sizes: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.normal(size=tuple(int(sp.sympify(d).subs(sizes)) for d in leaf.shape))
            for name, leaf in der.leaves.items()}


def _torch_reference(spec: str, names: tuple, values: dict) -> tuple[float, dict]:
    tensors = {n: torch.tensor(values[n], requires_grad=True) for n in names}
    y = torch.einsum(spec, *(tensors[n] for n in names))
    loss = (y * torch.tensor(values["G"])).sum()
    grads = torch.autograd.grad(loss, [tensors[n] for n in names])
    return loss.item(), {n: g.numpy() for n, g in zip(names, grads, strict=True)}


def test_the_gradients_of_a_batched_product_call_blas_and_no_scalar_loop(case):
    """Each gradient of Σ G ⊙ Y is itself a product of tensors: one matrix product (np.dot)
    each, and no loop function at all except the bilinear form's outer products x ⊗ z."""
    name, der, _, names = case
    kernel = der.compile(outputs=[f"grad:{n}" for n in names], jit=False)
    assert kernel.source.count("np.dot(") >= len(names)
    steps = [type(step) for step in plan({str(key): node for key, node
                                          in kernel.output_nodes.items()}).steps]
    assert steps.count(BatchedContraction) == len(names)
    if name != "batched_bilinear":
        assert "def _loop" not in kernel.source


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_batched_products_match_torch_einsum_autograd(case, dtype, rtol):
    _, der, spec, names = case
    kernel = der.compile(jit=False)
    for sizes in (SIZES, {**SIZES, H: 1, J: 1}):  # and with axes of size 1
        values = _inputs(der, sizes)
        got = kernel(**{n: v.astype(dtype) for n, v in values.items()})
        want, grads = _torch_reference(spec, names, values)
        scale = sum(abs(v).max() for v in values.values())  # float32: terms of that size
        atol = 0 if dtype == np.float64 else 1e-6 * scale
        np.testing.assert_allclose(got.value, want, rtol=rtol, atol=atol * 10)
        for n in names:
            assert got.grad[n].dtype == dtype  # BLAS in the input precision
            np.testing.assert_allclose(got.grad[n], grads[n], rtol=rtol, atol=atol)


def test_a_product_that_is_no_matrix_product_stays_in_a_loop():
    """A label summed over one operand alone, or no summed label (a Hadamard product over a
    batch): no GEMM, the fused loops compute it."""
    x = ir.leaf("X", (B, T, D), sp.Symbol("X"))
    w = ir.leaf("W", (B, T, D), sp.Symbol("W"))
    v = ir.leaf("V", (T, D, K), sp.Symbol("V"))
    hadamard = ir.einsum([x, w], [(0, 1, 2), (0, 1, 2)], (0, 1, 2))
    one_sided = ir.einsum([x, v], [(0, 1, 2), (3, 2, 4)], (0, 1, 4))  # t summed in X only
    for node in (hadamard, one_sided):
        assert [type(step) for step in plan({"y": node}).steps] == [LoopGroup]
    product = ir.einsum([x, v], [(0, 1, 2), (1, 2, 3)], (0, 3))  # Σ_{t,d} X V: a GEMM
    (step,) = plan({"y": product}).steps
    assert isinstance(step, BatchedContraction) and step.copies() == [False, False, False]
