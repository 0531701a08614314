"""Linear algebra primitives (the inverse, the log-determinant and the determinant): values,
gradients and Hessians against PyTorch's ``torch.linalg`` through autograd, float64."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl

d = sp.Symbol("d", integer=True, positive=True)
A = sp.MatrixSymbol("A", d, d)
b = sp.MatrixSymbol("b", d, 1)


def _torch_hessian(f, x: np.ndarray) -> np.ndarray:
    h = torch.autograd.functional.hessian(f, torch.tensor(x, dtype=torch.float64))
    return h.numpy()


def test_hessian_and_latex_through_an_inverse_match_torch() -> None:
    # b^T A^{-1} b: its Hessian in A has a rank-4 solve inside, which had no index notation
    # (UnsupportedError) before; printed, evaluated and typeset it now agrees with torch.
    der = symdl.derive((b.T * A.inv() * b)[0, 0], wrt=[A, b], hessian=True)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    v = rng.normal(size=(3, 1))
    values, dims = {"A": a, "b": v}, {d: 3}
    tb = torch.tensor(v)
    want_aa = _torch_hessian(lambda x: (tb.T @ torch.linalg.inv(x) @ tb).sum(), a)
    printed = symdl.evaluate(der.hessian(A, A), values, dims)
    np.testing.assert_allclose(np.reshape(printed, (3, 3, 3, 3)), want_aa, rtol=1e-10,
                               atol=1e-12)
    got = der.evaluate(values, dims)["hessian:A,A"]
    np.testing.assert_allclose(np.reshape(got, (3, 3, 3, 3)), want_aa, rtol=1e-10, atol=1e-12)
    ta = torch.tensor(a)
    want_ba = torch.autograd.functional.hessian(
        lambda x, y: (y.T @ torch.linalg.inv(x) @ y).sum(), (ta, tb))[1][0].numpy()
    printed = symdl.evaluate(der.hessian(b, A), values, dims)
    np.testing.assert_allclose(np.reshape(printed, (3, 3, 3)), want_ba.reshape(3, 3, 3),
                               rtol=1e-10, atol=1e-12)
    latex = der.to_latex()
    assert "A^{-1}" in latex and "Hessian" in latex
