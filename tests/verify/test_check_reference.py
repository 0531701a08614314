"""The SymPy reference of ``symdl.check``: index forms read hoisted explicit matrices."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

import symdl
from symdl.verify import reference

k = sp.Symbol("k", integer=True, positive=True)


def _softmax_of_product_hessian(first: str = "P0"):
    P0, P1 = sp.MatrixSymbol(first, k, k), sp.MatrixSymbol("P1", k, k)
    loss = symdl.total(sp.hadamard_product(symdl.softmax(P0 * P1), symdl.softmax(P0 * P1)))
    der = symdl.derive(loss, wrt=[P0, P1], hessian=True)
    return der, der.hessian(P0, P0, inline=False)


def test_symbolic_entries_of_a_matrix_expression_are_hoisted_once():
    _, form = _softmax_of_product_hessian()
    plain = {i: sp.Symbol(str(i.label), integer=True) for i in form.expr.atoms(sp.Idx)}
    hoisted: dict[str, sp.MatrixBase] = {}
    body = reference.explicit(form.expr.xreplace(plain), {k: 3}, hoisted=hoisted)
    # softmax(P0 P1) is written out once, as a named 3 x 3 matrix read at symbolic indices.
    assert list(hoisted) == ["hoisted0"]
    assert hoisted["hoisted0"].shape == (3, 3)
    parents = {type(m.parent) for m in body.atoms(MatrixElement)}
    assert parents == {sp.MatrixSymbol}


def test_hoisted_reference_agrees_with_the_kernel_and_finite_differences():
    der, form = _softmax_of_product_hessian()
    rng = np.random.default_rng(0)
    values = {"P0": rng.normal(size=(3, 3)), "P1": rng.normal(size=(3, 3))}
    block = reference.index_form_function(form, {k: 3})(values)
    kernel = der.compile(jit=False)
    analytic = kernel(**values).hessian[("P0", "P0")]
    np.testing.assert_allclose(block.reshape(analytic.shape), analytic, rtol=1e-10, atol=1e-12)
    # and the kernel's gradient differenced along each entry of P0
    eps = 1e-6
    for a in range(3):
        for b in range(3):
            up, down = dict(values), dict(values)
            up["P0"] = values["P0"].copy()
            down["P0"] = values["P0"].copy()
            up["P0"][a, b] += eps
            down["P0"][a, b] -= eps
            column = (kernel(**up).grad["P0"] - kernel(**down).grad["P0"]) / (2 * eps)
            np.testing.assert_allclose(block[:, :, a, b], column, atol=1e-6)


def test_hoisted_names_never_collide_with_an_input():
    _, form = _softmax_of_product_hessian(first="hoisted0")
    plain = {i: sp.Symbol(str(i.label), integer=True) for i in form.expr.atoms(sp.Idx)}
    hoisted: dict[str, sp.MatrixBase] = {}
    reference.explicit(form.expr.xreplace(plain), {k: 2}, hoisted=hoisted)
    assert hoisted and all(not name.startswith("hoisted") for name in hoisted)


def test_hoisted_names_never_collide_with_a_scalar_input():
    """A scalar parameter named like the first hoisted matrix (found in review: its value was
    overwritten by the matrix)."""
    n, d = sp.symbols("n d", integer=True, positive=True)
    W, x, y = sp.MatrixSymbol("W", n, d), sp.MatrixSymbol("x", d, 1), sp.MatrixSymbol("y", n, 1)
    rng = np.random.default_rng(0)
    values = {"W": rng.normal(size=(2, 3)), "x": rng.normal(size=(3, 1)),
              "y": rng.normal(size=(2, 1))}
    blocks = {}
    for name in ("a", "hoisted0"):
        a = sp.Symbol(name)
        loss = symdl.total(sp.hadamard_product(symdl.softmax(W * x), y)) * a**2
        form = symdl.derive(loss, wrt=[W], hessian=True).hessian(W, W, inline=False)
        blocks[name] = reference.index_form_function(form, {n: 2, d: 3})({**values, name: 1.7})
    np.testing.assert_allclose(blocks["hoisted0"], blocks["a"], rtol=1e-14)


def _reference_rows(report) -> set[tuple[str, str]]:
    return {(str(row.output), row.method) for row in report.rows if row.method == "sympy reference"}


def test_windowed_layers_are_checked_by_the_sympy_reference_not_skipped():
    # A strided, padded depthwise convolution written in plain SymPy (its output size a floor
    # of the input's, which symdl once refused as "function floor() is not supported"):
    # the result prints as X ⋆ dZ and dZ ⋆ᵀ K, and the reference evaluates those forms entry
    # by entry in index notation (it used to skip every convolution: "Conv was not printed
    # from a derivation").
    N, C, H, Wd = sp.symbols("N C H Wd", integer=True, positive=True)
    X = sp.IndexedBase("X", shape=(N, C, H, Wd))
    K = sp.IndexedBase("K", shape=(C, 3, 3))
    Ho, Wo = (H - 1) // 2 + 1, (Wd - 1) // 2 + 1
    Z = sp.IndexedBase("Z", shape=(N, C, Ho, Wo))
    b, c, i, j, p, q = sp.symbols("b c i j p q", integer=True)
    der = symdl.derive([
        (Z[b, c, i, j], sp.Sum(K[c, p, q] * X[b, c, 2 * i + p - 1, 2 * j + q - 1],
                               (p, 0, 2), (q, 0, 2))),
        (sp.Symbol("L"), sp.Sum(symdl.tanh(Z[b, c, i, j]) ** 2, (b, 0, N - 1), (c, 0, C - 1),
                                (i, 0, Ho - 1), (j, 0, Wo - 1))),
    ], wrt=[K, X])
    assert "⋆" in str(der.equations()[-1].rhs)
    report = symdl.check(der, jit=False, hvp=False, dims={N: 2, C: 2, H: 5, Wd: 4})
    assert report.ok, report
    assert {("value", "sympy reference"), ("grad:K", "sympy reference"),
            ("grad:X", "sympy reference")} <= _reference_rows(report), report
    assert not report.skipped, report


def test_padding_never_wins_a_max_pool_in_the_reference():
    # All inputs negative: a padded entry read as 0 would be every window's maximum. The
    # reference reads -inf there (as the kernel and PyTorch do), inside the maximum that
    # binds the window's index (not a Piecewise SymPy would fold out of it, nor a CSE
    # temporary lifted out of the lambda that binds it).
    n = sp.Symbol("n", integer=True, positive=True)
    X = sp.IndexedBase("X", shape=(n, 4, 4, 1))
    G = sp.IndexedBase("G", shape=(n, 2, 2, 1))
    P = sp.IndexedBase("P", shape=(n, 2, 2, 1))
    b, i, j, c = sp.symbols("b i j c", integer=True)
    der = symdl.derive([
        (P, symdl.max_pool2d(X, 3, stride=2, padding=1)),
        (sp.Symbol("L"), sp.Sum(G[b, i, j, c] * P[b, i, j, c], (b, 0, n - 1), (i, 0, 1),
                                (j, 0, 1), (c, 0, 0))),
    ], wrt=[X])

    def negative(rng, dims):
        return {"X": -1 - np.abs(rng.normal(size=(dims[n], 4, 4, 1))),
                "G": rng.normal(size=(dims[n], 2, 2, 1))}

    report = symdl.check(der, jit=False, hvp=False, sample_inputs=negative, dims={n: 2})
    assert report.ok, report
    assert {("value", "sympy reference"), ("grad:X", "sympy reference")} <= _reference_rows(
        report), report
