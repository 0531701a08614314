"""``der.lambdify()``: plain NumPy functions of the value, gradients and Hessians (issue 17,
item 2).

Oracles: the generated kernel (run as plain Python, ``jit=False``), symdl's IR evaluator
(a separate NumPy code path: einsums over the IR, not the printed SymPy) and PyTorch
autograd.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl import catalog
from tests.end_to_end.test_derivations import _inputs


def _logistic():
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, y, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("y", n, 1), sp.MatrixSymbol("w", d, 1)
    return symdl.derive(symdl.binary_cross_entropy_with_logits(X * w, y), wrt=[w],
                        hessian=True)


def test_functions_match_the_kernel_at_two_batch_sizes() -> None:
    der = _logistic()
    f = der.lambdify()
    kernel = der.compile(jit=False)
    rng = np.random.default_rng(0)
    for n, d in [(5, 3), (11, 4)]:  # sizes inferred from the arrays, per call
        args = {"X": rng.normal(size=(n, d)), "w": rng.normal(size=(d, 1)),
                "y": rng.uniform(size=(n, 1))}
        want = kernel(**args)
        assert f.value(**args) == pytest.approx(want.value, rel=1e-13)
        np.testing.assert_allclose(f.grad["w"](**args), want.grad["w"], rtol=1e-12)
        np.testing.assert_allclose(f.hessian["w", "w"](**args), want.hessian["w", "w"],
                                   rtol=1e-12)
        assert sorted(f(**args)) == sorted(want.outputs)
    assert "numba" not in f.grad["w"].source and "dot" in f.grad["w"].source


def test_mlp_gradients_match_pytorch() -> None:
    der = catalog.load("two_layer_mlp").derive()
    f = der.lambdify()
    rng = np.random.default_rng(1)
    n, d, h, k = 6, 4, 5, 3
    args = {"X": rng.normal(size=(n, d)), "Y": np.eye(k)[rng.integers(0, k, n)],
            "W1": rng.normal(size=(d, h)), "b1": rng.normal(size=(1, h)),
            "W2": rng.normal(size=(h, k)), "b2": rng.normal(size=(1, k))}
    t = {name: torch.tensor(a, requires_grad=True) for name, a in args.items()}
    Z2 = torch.tanh(t["X"] @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
    loss = -(t["Y"] * torch.log_softmax(Z2, dim=1)).sum() / n
    loss.backward()
    assert f.value(**args) == pytest.approx(loss.item(), rel=1e-13)
    for p in ["W1", "b1", "W2", "b2"]:
        np.testing.assert_allclose(f.grad[p](**args), t[p].grad.numpy(), rtol=1e-11,
                                   atol=1e-14, err_msg=p)


# A squeezed Hessian block (scalar x column), a constant index-form block (an L2 penalty's
# identity, whose size comes from an array it does not read), and index-form blocks of a
# normalisation layer.
@pytest.mark.parametrize("name", ["model_map_gaussian_prior", "reg_l2", "layer_layernorm"])
def test_every_result_matches_the_ir_evaluator(name: str) -> None:
    entry = catalog.load(name)
    der = entry.derive()
    der.hessian(der.wrt[0], der.wrt[-1])
    values, dims = _inputs(der, np.random.default_rng(2), {"default": 2, "n": 3}, entry.module)
    f = der.lambdify()
    got = f(**{n: values[n] for n in f.input_names})
    want = der.evaluate(values, dims)
    assert sorted(got) == sorted(want)
    for key, array in want.items():
        np.testing.assert_allclose(got[key], array, rtol=1e-10, atol=1e-12, err_msg=key)
        assert np.shape(got[key]) == np.shape(array), key


def test_bad_arguments_raise_evaluation_errors() -> None:
    f = _logistic().lambdify()
    X, w, y = np.ones((4, 2)), np.ones((2, 1)), np.ones((4, 1))
    with pytest.raises(symdl.EvaluationError, match="missing arguments \\['y'\\]"):
        f.value(X=X, w=w)
    with pytest.raises(symdl.EvaluationError, match="unexpected arguments \\['v'\\]"):
        f.value(X=X, w=w, y=y, v=y)
    with pytest.raises(symdl.EvaluationError, match="y has n = 3 .* but X \\(4, 2\\) has n = 4"):
        f.grad["w"](X=X, w=w, y=y[:3])
    with pytest.raises(symdl.EvaluationError, match="reshape a vector to a column"):
        f.grad["w"](X=X, w=w.ravel(), y=y)


def test_hessian_blocks_of_names_with_commas_stay_apart() -> None:
    """Blocks (``a,b``, ``c``) and (``a``, ``b,c``) were both spelled ``hessian:a,b,c``: one
    overwrote the other in ``f(...)``. Keyed by ``HessianBlock`` they stay apart. Oracle: the
    second derivatives of ``L = p q^2 + r^3 s`` written out by hand."""
    p, q, r, s = (sp.Symbol(name, real=True) for name in ("a,b", "c", "a", "b,c"))
    der = symdl.derive(p * q**2 + r**3 * s, wrt=[p, q, r, s], hessian=True)
    f = der.lambdify()
    at = {"a,b": 2.0, "c": 3.0, "a": 5.0, "b,c": 7.0}
    results = f(**at)
    assert len(results) == 1 + 4 + 16  # value, 4 gradients, 16 Hessian blocks
    from symdl.ir.keys import HessianBlock

    pv, qv, rv, sv = at["a,b"], at["c"], at["a"], at["b,c"]
    assert float(results[HessianBlock("a,b", "c")]) == pytest.approx(2 * qv)
    assert float(results[HessianBlock("a", "b,c")]) == pytest.approx(3 * rv**2)
    assert float(results[HessianBlock("c", "c")]) == pytest.approx(2 * pv)
    assert float(results[HessianBlock("a", "a")]) == pytest.approx(6 * rv * sv)
