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
