"""Property-based tests of the shapes outside users wrote (issue 15), apart from
``test_properties.py`` so that the two files run on separate test workers: networks of named
graph-layer steps (``named_steps.py``, each against a PyTorch twin) and the definitions where
``symdl.check`` itself once ran for minutes, crashed or gave a wrong verdict."""

from __future__ import annotations

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from named_steps import check_program, named_step_programs
from test_properties import _SETTINGS, DIMS

import symdl

# Networks of named steps (graph layers: a named row sum reused in a Hadamard product with
# its outer product, sums with Identity, transposed reads of steps), checked against torch
# autograd; generator and oracle in named_steps.py. 100 interpreted definitions take about
# 25 s; the derandomised first draws are the shape of issue 15's wrong GCN gradient.
STEP_EXAMPLES = 100
STEP_JIT_EXAMPLES = 4


@settings(max_examples=STEP_EXAMPLES, **_SETTINGS)
@given(named_step_programs())
def test_random_named_step_networks_interpreted(program):
    check_program(program, jit=False)


@pytest.mark.filterwarnings("ignore::numba.NumbaPerformanceWarning")
@settings(max_examples=STEP_JIT_EXAMPLES, **_SETTINGS)
@given(named_step_programs())
def test_random_named_step_networks_jitted(program):
    check_program(program, jit=True)


# --------------------------------------------------------------------------------------------
# Shapes from outside (issue 15, item 12): definitions written the way users write them, where
# symdl.check itself ran for minutes, crashed or gave a wrong verdict.

OUTSIDE_EXAMPLES = 12
OUTSIDE_BUDGET = 3.0
"""Seconds of SymPy reference per outside definition: the finite differences and the
complex step decide; a reference over budget is a row saying so (checked below)."""
_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "erf_gelu")


def _activation(name: str, m: sp.MatrixExpr) -> sp.MatrixExpr:
    if name == "erf_gelu":  # the erf GELU with the constant 1/sqrt(2)
        t = sp.Symbol("t")
        return m.applyfunc(sp.Lambda(t, t * (1 + sp.erf(t / sp.sqrt(2))) / 2))
    return getattr(symdl, name)(m)


@st.composite
def outside_definitions(draw):
    """(loss, parameters, sizes, hessian): one of the outside shapes, with random choices."""
    n, d, h, k = DIMS
    kind = draw(st.sampled_from(["network", "shifted", "bce", "gram", "gelu"]))
    X = sp.MatrixSymbol("X", n, d)
    if kind == "network":  # a network of 2-3 layers written as ONE expression
        depth = draw(st.integers(2, 3))
        weights = [sp.MatrixSymbol("W0", d, h)] + [sp.MatrixSymbol(f"W{i}", h, h)
                                                     for i in range(1, depth)]
        a = X
        for W in weights:
            a = _activation(draw(st.sampled_from(_ACTIVATIONS)), a * W)
        Wo, Y = sp.MatrixSymbol("Wo", h, k), sp.MatrixSymbol("Y", n, k)
        loss = draw(st.sampled_from([symdl.softmax_cross_entropy, symdl.mse]))(a * Wo, Y)
        params, hessian = [*weights, Wo], False
    elif kind == "shifted":  # sums of products of shifted matrices, a scalar shift c
        A, B, C = (sp.MatrixSymbol(s, n, n) for s in "ABC")
        c, eye = sp.Symbol("c"), sp.Identity(n)
        shifts = [c, sp.Integer(draw(st.integers(1, 3))), sp.Rational(1, 2)]
        terms = [(A + shifts[0] * eye) * (B + eye), (B + shifts[1] * eye) * (C + eye)]
        if draw(st.booleans()):
            terms.append((A + shifts[2] * eye) * (C + 2 * eye) * (B + eye))
        loss = symdl.total(sp.HadamardPower(sp.MatAdd(*terms), 2))
        params, hessian = [A, B, c], True
    elif kind == "bce":  # the textbook binary cross-entropy
        w, y = sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
        s, one = symdl.sigmoid(X * w), sp.OneMatrix(n, 1)
        loss = -symdl.mean(sp.hadamard_product(y, symdl.log(s))
                           + sp.hadamard_product(one - y, symdl.log(one - s)))
        params, hessian = [w], True
    elif kind == "gram":  # least squares through the inverse of a Gram matrix
        y = sp.MatrixSymbol("y", n, 1)
        if draw(st.booleans()):
            solution = (X.T * X).inv() * X.T * y
        else:
            solution = X.T * (X * X.T).inv() * y
        loss = symdl.total(sp.HadamardPower(solution, 2))
        params, hessian = [X], False
    else:  # a GELU layer (tanh or erf form) with Hessians
        W, G = sp.MatrixSymbol("W", d, h), sp.MatrixSymbol("G", n, h)
        layer = _activation(draw(st.sampled_from(["gelu", "erf_gelu"])), X * W)
        loss = symdl.total(sp.hadamard_product(G, layer))
        params, hessian = [W], True
    sizes = {s: draw(st.integers(1, 4)) for s in DIMS}
    return loss, params, sizes, hessian


@settings(max_examples=OUTSIDE_EXAMPLES, **_SETTINGS)
@given(outside_definitions())
def test_outside_definitions_interpreted(case):
    """Every outside shape checks: no false alarm, no crash, a bounded reference (what it
    could not run is a row saying why), sizes drawn where Gram inverses are nonsingular."""
    loss, params, sizes, hessian = case
    der = symdl.derive(loss, wrt=params, hessian=hessian)
    inverted = any(isinstance(a, sp.Inverse) for a in sp.preorder_traversal(loss))
    # Gram inverses: check chooses the sizes (only an ordering by need makes them regular).
    used = {} if inverted else {s: v for s, v in sizes.items() if s in der.dims}
    report = symdl.check(der, jit=False, seed=len(params), dims=used,
                         reference_budget=OUTSIDE_BUDGET)
    assert report.ok, f"{loss}\n{report}"
    for output in {r.output for r in report.rows} - {"value"}:
        assert any(r.output == output and r.method.startswith("central") for r in report.rows)
    compared = {(r.output, r.method) for r in report.rows if r.method == "sympy reference"}
    skipped = {(s.output, s.method) for s in report.skipped}
    assert ("value", "sympy reference") in compared | skipped
    assert all(s.reason.startswith(("not run", "not applicable")) for s in report.skipped)
