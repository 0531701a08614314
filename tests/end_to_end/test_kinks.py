"""Kinks as SymPy users write them: Max, Min, Piecewise, Abs, sign, Heaviside (issue 15).

Every definition below is plain SymPy (elementwise through ``applyfunc`` or index notation)
and is compared with PyTorch 2.13's autograd (an independent oracle): the value, every
gradient and every Hessian block (zero almost everywhere where the function is piecewise
linear), through the interpreted path (``Derivation.evaluate`` on the IR and
``symdl.evaluate`` of the printed formulas) and the jitted kernels, in float64 and float32.
Inputs are random normal: a kink is met with probability 0. The conventions at the kinks
are checked by hand-computed values at the kinks themselves. ``symdl.check`` passes on each
definition and fails on a deliberately wrong gradient.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

import symdl
from symdl.errors import UnsupportedError
from symdl.kernels.kernel import Kernel
from symdl.verify.check import check

n, d, h = sp.symbols("n d h", integer=True, positive=True)
i, j = sp.symbols("i j", integer=True)
SIZES = {n: 5, d: 3, h: 4}

# Matrix spelling
X = sp.MatrixSymbol("X", n, d)
W = sp.MatrixSymbol("W", d, h)
V = sp.MatrixSymbol("V", h, 1)
w = sp.MatrixSymbol("w", d, 1)
y = sp.MatrixSymbol("y", n, 1)
C = sp.MatrixSymbol("C", n, 1)

# Index spelling
Xi = sp.IndexedBase("X", shape=(n, d))
wi = sp.IndexedBase("w", shape=(d,))
yi = sp.IndexedBase("y", shape=(n,))
a = sp.IndexedBase("a", shape=(n,))
b = sp.IndexedBase("b", shape=(n,))
c = sp.IndexedBase("c", shape=(n,))
A = sp.IndexedBase("A", shape=(n, d))
B = sp.IndexedBase("B", shape=(n, d))
G = sp.IndexedBase("G", shape=(n, d))
delta = sp.Symbol("delta", real=True)


def _score_i():
    return sp.Sum(Xi[i, j] * wi[j], (j, 0, d - 1))


def _relu_max(t):
    return sp.Max(0, t)


def _huber_piecewise(t, dl=1):
    return sp.Piecewise((t**2 / 2, sp.Abs(t) <= dl), (dl * (sp.Abs(t) - dl / 2), True))


def _huber_three_pieces(t, dl):
    # The conditions a user writes: t < -delta, And(...), the rest.
    return sp.Piecewise((-dl * t - dl**2 / 2, t < -dl),
                        (t**2 / 2, sp.And(t >= -dl, t <= dl)),
                        (dl * t - dl**2 / 2, True))


@dataclass
class Case:
    """A definition, its parameters, its inputs and PyTorch's version of it."""

    definition: Callable[[], sp.Basic]
    wrt: list
    inputs: Callable[[np.random.Generator], dict[str, np.ndarray]]
    torch_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _normal(**shapes):
    return lambda rng: {k: rng.standard_normal(s) for k, s in shapes.items()}


def _labels(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


CASES = {
    # Hinge loss, index notation: Sum(Max(0, 1 - y_i x_i.w), i).
    "hinge_index": Case(
        lambda: sp.Sum(sp.Max(0, 1 - yi[i] * _score_i()), (i, 0, n - 1)) / n, [wi],
        lambda rng: {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal(3),
                     "y": _labels(rng, 5)},
        lambda t: torch.clamp(1 - t["y"] * (t["X"] @ t["w"]), min=0).mean()),
    # Hinge loss, matrix notation with applyfunc.
    "hinge_matrix": Case(
        lambda: symdl.sum((sp.OneMatrix(n, 1) - sp.hadamard_product(y, X * w))
                          .applyfunc(_relu_max)), [w],
        lambda rng: {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal((3, 1)),
                     "y": _labels(rng, (5, 1))},
        lambda t: F.relu(1 - t["y"] * (t["X"] @ t["w"])).sum()),
    # A ReLU network written with Max(0, .): two weight matrices, cross Hessian blocks.
    "relu_mlp_max": Case(
        lambda: symdl.sum(((X * W).applyfunc(_relu_max) * V - y).applyfunc(lambda t: t**2)),
        [W, V], _normal(X=(5, 3), W=(3, 4), V=(4, 1), y=(5, 1)),
        lambda t: ((F.relu(t["X"] @ t["W"]) @ t["V"] - t["y"]) ** 2).sum()),
    # Huber with Piecewise (delta = 1) on a regression residual.
    "huber_piecewise": Case(
        lambda: symdl.sum((X * w - y).applyfunc(_huber_piecewise)), [w],
        lambda rng: {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal((3, 1)),
                     "y": 2 * rng.standard_normal((5, 1))},
        lambda t: F.huber_loss(t["X"] @ t["w"], t["y"], reduction="sum", delta=1.0)),
    # Huber, three pieces with And, index notation, a symbolic delta (a parameter too).
    "huber_three_pieces_symbolic_delta": Case(
        lambda: sp.Sum(_huber_three_pieces(yi[i] - _score_i(), delta), (i, 0, n - 1)),
        [wi, delta],
        lambda rng: {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal(3),
                     "y": 2 * rng.standard_normal(5), "delta": np.array(0.7)},
        lambda t: _torch_huber(t["y"] - t["X"] @ t["w"], t["delta"]).sum()),
    # Huber through applyfunc closing over a symbolic delta (a parameter).
    "huber_applyfunc_symbolic_delta": Case(
        lambda: symdl.sum((X * w - y).applyfunc(
            lambda t: _huber_piecewise(t, sp.Symbol("delta", positive=True)))),
        [w, sp.Symbol("delta", positive=True)],
        lambda rng: {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal((3, 1)),
                     "y": 2 * rng.standard_normal((5, 1)), "delta": np.array(0.8)},
        lambda t: _torch_huber(t["X"] @ t["w"] - t["y"], t["delta"]).sum()),
    # Clipping, Min(Max(.)), weighted so that the gradient is not all ones.
    "clip_min_max": Case(
        lambda: symdl.sum(sp.hadamard_product(
            C, (X * w).applyfunc(lambda t: sp.Min(sp.Max(t, -1), 1)))), [w],
        lambda rng: {"X": rng.standard_normal((5, 3)), "w": rng.standard_normal((3, 1)),
                     "C": rng.standard_normal((5, 1))},
        lambda t: (t["C"] * torch.clamp(t["X"] @ t["w"], -1, 1)).sum()),
    # Max and Min of two matrices' entries (symbolic on both sides).
    "max_min_two_matrices": Case(
        lambda: sp.Sum(G[i, j] * sp.Max(A[i, j], B[i, j]) + sp.Min(A[i, j], B[i, j]) ** 2,
                       (i, 0, n - 1), (j, 0, d - 1)), [A, B],
        _normal(A=(5, 3), B=(5, 3), G=(5, 3)),
        lambda t: (t["G"] * torch.maximum(t["A"], t["B"])
                   + torch.minimum(t["A"], t["B"]) ** 2).sum()),
    # Three arguments and a constant, nested in a smooth function.
    "max_three_nested": Case(
        lambda: sp.Sum(sp.tanh(sp.Max(a[i], 2 * b[i], c[i], sp.Rational(-1, 2))) * c[i],
                       (i, 0, n - 1)), [a, b, c], _normal(a=5, b=5, c=5),
        lambda t: (torch.tanh(torch.clamp(torch.maximum(torch.maximum(t["a"], 2 * t["b"]),
                                                        t["c"]), min=-0.5)) * t["c"]).sum()),
    # A smooth function inside the kink: Min(exp(a), b) squared.
    "min_of_exp": Case(
        lambda: sp.Sum(sp.Min(sp.exp(a[i]), b[i] + 1) ** 2, (i, 0, n - 1)), [a, b],
        _normal(a=5, b=5),
        lambda t: (torch.minimum(torch.exp(t["a"]), t["b"] + 1) ** 2).sum()),
    # Abs, sign, Heaviside (the other kinks users write), mixed with Max.
    "abs_sign_heaviside": Case(
        lambda: sp.Sum(sp.Abs(a[i]) * b[i] + sp.sign(a[i]) * b[i] ** 2
                       + sp.Heaviside(b[i]) * a[i] ** 3 + sp.Max(a[i], b[i]) * sp.Abs(b[i]),
                       (i, 0, n - 1)), [a, b], _normal(a=5, b=5),
        lambda t: (torch.abs(t["a"]) * t["b"] + torch.sign(t["a"]) * t["b"] ** 2
                   + (t["b"] > 0).double() * t["a"] ** 3
                   + torch.maximum(t["a"], t["b"]) * torch.abs(t["b"])).sum()),
    # A Piecewise inside a Max, with Or in a condition.
    "piecewise_in_max": Case(
        lambda: sp.Sum(sp.Max(sp.Piecewise((a[i] ** 2, sp.Or(a[i] < -1, a[i] > 1)),
                                           (b[i] * a[i], True)), b[i]), (i, 0, n - 1)),
        [a, b], _normal(a=5, b=5),
        lambda t: torch.maximum(torch.where((t["a"] < -1) | (t["a"] > 1), t["a"] ** 2,
                                            t["b"] * t["a"]), t["b"]).sum()),
}


def _torch_huber(r, dl):
    return torch.where(r.abs() <= dl, r**2 / 2, dl * (r.abs() - dl / 2))


def _name(p) -> str:
    return str(p.name) if isinstance(p, sp.MatrixSymbol) else str(getattr(p, "label", p))


@pytest.fixture(scope="module")
def derived():
    cache: dict[str, symdl.Derivation] = {}

    def get(name: str) -> symdl.Derivation:
        if name not in cache:
            case = CASES[name]
            cache[name] = symdl.derive(case.definition(), wrt=case.wrt, hessian=True)
        return cache[name]

    return get


def _torch_reference(case: Case, values: dict) -> tuple[float, dict, dict]:
    """PyTorch's value, gradients and Hessian blocks (float64)."""
    names = [_name(p) for p in case.wrt]
    inputs = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in values.items()}

    def loss(*params):
        return case.torch_loss({**inputs, **dict(zip(names, params, strict=True))})

    params = [inputs[k].clone().requires_grad_(True) for k in names]
    value = loss(*params)
    grads = torch.autograd.grad(value, params)
    hess = torch.autograd.functional.hessian(loss, tuple(inputs[k] for k in names))
    hessians = {(p, q): hess[a][b_].numpy() for a, p in enumerate(names)
                for b_, q in enumerate(names)}
    return value.item(), {k: g.numpy() for k, g in zip(names, grads, strict=True)}, hessians


def _values(name: str, seed: int = 0) -> dict:
    return CASES[name].inputs(np.random.default_rng(seed))


def _close(actual, expected, rtol, atol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.size == expected.size, f"{what}: {actual.shape} vs {expected.shape}"
    np.testing.assert_allclose(actual.reshape(expected.shape), expected, rtol=rtol, atol=atol,
                               err_msg=what)


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_matches_pytorch(name, derived):
    """The IR evaluated with NumPy, and the printed formulas evaluated again: value,
    gradients and Hessian blocks equal PyTorch's to rounding."""
    case = CASES[name]
    der = derived(name)
    values = _values(name)
    value, grads, hessians = _torch_reference(case, values)
    result = der.evaluate(values, SIZES)
    _close(result["value"], value, 1e-12, 1e-12, "value")
    for p in case.wrt:
        _close(result[f"grad:{_name(p)}"], grads[_name(p)], 1e-11, 1e-12, f"grad {p}")
        printed = symdl.evaluate(der.gradient(p), values, SIZES)
        _close(printed, grads[_name(p)], 1e-11, 1e-12, f"printed grad {p}")
    for (p, q), expected in hessians.items():
        _close(result[f"hessian:{p},{q}"], expected, 1e-11, 1e-12, f"hessian {p},{q}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_pytorch(name, dtype, derived):
    case = CASES[name]
    der = derived(name)
    values = _values(name, seed=1)
    values = {k: np.asarray(v, dtype=dtype) for k, v in values.items()}
    # PyTorch sees the same (rounded) inputs, in float64.
    value, grads, hessians = _torch_reference(case, values)
    kernel = der.compile()
    out = kernel(**{k: v if v.ndim else v.item() for k, v in values.items()})
    rtol, atol = (1e-12, 1e-12) if dtype == np.float64 else (2e-5, 2e-5)
    assert np.asarray(out.grad[_name(case.wrt[0])]).dtype == dtype
    _close(out.value, value, rtol, atol, "value")
    for p in case.wrt:
        _close(out.grad[_name(p)], grads[_name(p)], rtol, atol, f"grad {p}")
    for (p, q), expected in hessians.items():
        _close(out.hessian[p, q], expected, rtol, atol, f"hessian {p},{q}")


@pytest.mark.parametrize("name", list(CASES))
def test_check_passes(name, derived):
    report = check(derived(name), jit=False)
    assert report.ok, report
    assert report.max_rel_error < 1e-6
    assert any("complex step: not applicable" in note for note in report.notes)


def test_check_fails_on_a_wrong_kink():
    """A hinge gradient whose kink is in the wrong place (margin 0 instead of 1) and a Huber
    gradient with the wrong delta: symdl.check catches both."""
    hinge = symdl.derive(CASES["hinge_index"].definition(), wrt=[wi])
    shifted = symdl.derive(sp.Sum(sp.Max(0, -yi[i] * _score_i()), (i, 0, n - 1)) / n, wrt=[wi])
    k = Kernel({"value": hinge.output, "grad:w": shifted.gradient_node(wi)},
               list(hinge.leaves.values()), "hinge with a wrong kink", jit=False)
    rng = np.random.default_rng(3)
    values = {"X": rng.standard_normal((9, 3)), "w": 2 * rng.standard_normal(3),
              "y": _labels(rng, 9)}
    report = check(k, **values)
    assert not report.ok and {r.output for r in report.failures} == {"grad:w"}

    t = sp.Dummy("t")
    huber = symdl.derive(symdl.sum((X * w - y).applyfunc(sp.Lambda(t, _huber_piecewise(t)))),
                         wrt=[w])
    wrong = symdl.derive(symdl.sum((X * w - y).applyfunc(
        sp.Lambda(t, _huber_piecewise(t, sp.Rational(3, 2))))), wrt=[w])
    k = Kernel({"value": huber.output, "grad:w": wrong.gradient_node(w)},
               list(huber.leaves.values()), "huber with a wrong delta", jit=False)
    values = {"X": rng.standard_normal((9, 3)), "w": rng.standard_normal((3, 1)),
              "y": 2 * rng.standard_normal((9, 1))}
    report = check(k, **values)
    assert not report.ok and {r.output for r in report.failures} == {"grad:w"}


# ---------------------------------------------------------------------------------------------
# Conventions at the kinks and NaN, by hand


def _at_kinks(definition, wrt, values, jit=True):
    der = symdl.derive(definition, wrt=wrt)
    interpreted = der.evaluate(values, {n: len(next(iter(values.values())))})
    out = der.compile(jit=jit)(**values)
    return der, interpreted, out


def test_max_min_subgradient_conventions_at_ties():
    """Max(0, t) at t = 0 has derivative 0 (like relu); Min(t, 0) too (the constant wins a
    tie); Max(a, b) at a tie gives the derivative to the first of SymPy's arguments only."""
    t = np.array([0.0, 0.0, 1.0, -1.0])
    u = np.array([0.0, 1.0, 1.0, 2.0])
    g = np.array([1.0, 2.0, 3.0, 4.0])
    definition = sp.Sum(b[i] * sp.Max(0, a[i]) + c[i] * sp.Min(a[i], 0)
                        + sp.Max(a[i], c[i]) ** 2, (i, 0, n - 1))
    for p, expected in [
        # d/da: b H(a>0) + c H(a<0) + 2 Max(a, c) [a >= c]   (a comes first in Max(a, c))
        (a, g * (t > 0) + u * (t < 0) + 2 * np.maximum(t, u) * (t >= u)),
        # d/dc: Min(a, 0) + 2 Max(a, c) [c > a]
        (c, np.minimum(t, 0) + 2 * np.maximum(t, u) * (u > t)),
    ]:
        der, interpreted, out = _at_kinks(definition, [p], {"a": t, "b": g, "c": u})
        assert sp.Max(a[i], c[i]).args == (a[i], c[i])  # SymPy's order, as printed
        np.testing.assert_array_equal(interpreted[f"grad:{p.label}"], expected)
        np.testing.assert_array_equal(out.grad[str(p.label)], expected)


def test_relu_abs_sign_heaviside_conventions_agree():
    """relu'(0) = Max(0, .)'(0) = 0, |x|'(0) = sign(0) = 0, Heaviside(0) = its H0 (SymPy's
    default 1/2, or the one given), in the interpreted path and the kernel."""
    x0 = np.array([0.0, 0.0, 2.0])
    definition = sp.Sum(symdl.primitives.functions.relu(a[i]) + sp.Max(0, b[i]) + sp.Abs(c[i])
                        + sp.Heaviside(a[i]) * b[i] + sp.Heaviside(a[i], 0) * c[i],
                        (i, 0, n - 1))
    values = {"a": x0, "b": x0.copy(), "c": x0.copy()}
    der, interpreted, out = _at_kinks(definition, [a, b, c], values)
    for result in (interpreted, {f"grad:{k}": v for k, v in out.grad.items()}):
        np.testing.assert_array_equal(result["grad:a"], [0.0, 0.0, 1.0])
        np.testing.assert_array_equal(result["grad:b"], [0.5, 0.5, 2.0])  # Max' + H(a)
        np.testing.assert_array_equal(result["grad:c"], [0.0, 0.0, 2.0])  # sign + H(a, 0)


def test_piecewise_derivative_at_a_boundary_is_the_selected_piece():
    """At t = 1, Piecewise((t**2, t <= 1), (3 t, True)) selects t**2: derivative 2."""
    definition = sp.Sum(sp.Piecewise((a[i] ** 2, a[i] <= 1), (3 * a[i], True)), (i, 0, n - 1))
    values = {"a": np.array([1.0, 1.5, -2.0])}
    _, interpreted, out = _at_kinks(definition, [a], values)
    for grad in (interpreted["grad:a"], out.grad["a"]):
        np.testing.assert_array_equal(grad, [2.0, 3.0, -4.0])


NAN_BODIES = {
    "max_0_a": sp.Max(0, a[i]) * b[i], "max_a_b": sp.Max(a[i], b[i]),
    "max_b_a": sp.Max(b[i], a[i]), "min": sp.Min(a[i], 1) * b[i], "abs": sp.Abs(a[i]) * b[i],
    "sign": sp.sign(a[i]) * b[i], "heaviside": sp.Heaviside(a[i]) * b[i],
    "heaviside_h0": sp.Heaviside(a[i], 0) * b[i],
    "piecewise": sp.Piecewise((b[i], a[i] > 0), (a[i] * b[i], True)),
}


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("body", list(NAN_BODIES))
def test_nan_propagates_through_max_min_abs_sign_heaviside(body, jit):
    """Max(0, NaN) is NaN in either argument position (np.maximum, torch.maximum), and so
    are Min, Abs, sign and Heaviside of NaN (np.sign, np.heaviside), in the kernel and in
    the interpreted path; a NaN-free entry is unaffected."""
    der = symdl.derive(sp.Sum(NAN_BODIES[body], (i, 0, n - 1)), wrt=[b])
    values = {"a": np.array([np.nan, 2.0]), "b": np.array([1.0, 3.0])}
    out = der.compile(jit=jit)(**values)
    reference = der.evaluate(values)
    assert np.isnan(out.value) and np.isnan(reference["value"])
    clean = {"a": np.array([2.0]), "b": np.array([3.0])}
    assert np.isfinite(der.compile(jit=jit)(**clean).value)


def test_heaviside_of_a_scalar_compiles():
    """Heaviside(x)*x raised TypeError from mpmath when compiled (its H0 became a map
    variable that the printer tried to turn into a Float)."""
    x = sp.Symbol("x", real=True)
    der = symdl.derive(sp.Heaviside(x) * x**2 + sp.Heaviside(x - 1, 0) * x, wrt=[x])
    for at, grad in [(2.0, 5.0), (0.5, 1.0), (-1.0, 0.0), (1.0, 2.0)]:
        assert der.compile()(x=at).grad["x"] == grad


def test_kernels_are_branch_free_selects():
    """Max/Min compile to the _max2/_min2 selects and Piecewise to conditional expressions
    (no if statements in the loops), so the loops can vectorise."""
    der = symdl.derive(symdl.sum((X * w - y).applyfunc(
        lambda t: sp.Min(sp.Max(t, -1), 1) + _huber_piecewise(t))), wrt=[w])
    source = der.compile(jit=False).source
    # The jitted functions only (the module's Python entry points check arguments with ifs).
    jitted = [block for block in source.split("\n\n\n") if "@numba.njit" in block]
    loops = "\n".join(block for block in jitted if "def _loop" in block)
    assert "_max2(" in loops and "_min2(" in loops and " if (abs(" in loops
    assert "\n            if " not in loops and "\n                if " not in loops


def test_printing_text_and_latex():
    der = symdl.derive(CASES["hinge_index"].definition(), wrt=[wi])
    text = str(der.gradient(wi))
    assert "Piecewise" in text and "< 1" in text
    t = sp.Symbol("t")
    from symdl.primitives.functions import maximum, minimum
    assert str(maximum(0, t)) == "Max(0, t)" and str(minimum(t, 1)) == "Min(t, 1)"
    assert sp.latex(maximum(0, t)) == r"\max\left(0, t\right)"
    clip = symdl.derive(symdl.sum((X * w).applyfunc(lambda s: sp.Min(sp.Max(s, -1), 1))),
                        wrt=[w])
    assert r"\max" in clip.to_latex() and r"\min" in clip.to_latex()
    # sympy.lambdify understands the ordered functions (NumPy's maximum/minimum).
    f = sp.lambdify([t], minimum(1, maximum(-1, t)), "numpy")
    np.testing.assert_array_equal(f(np.array([-3.0, 0.5, 3.0, np.nan])), [-1, 0.5, 1, np.nan])


def test_applyfunc_closing_over_a_scalar_symbol_is_differentiated():
    """X.applyfunc(lambda t: s*tanh(t)) took s as a constant: d/ds came out 0, silently, and
    the kernel had no value for s."""
    s = sp.Symbol("s", real=True)
    der = symdl.derive(symdl.sum((X * w).applyfunc(lambda t: s * sp.tanh(t))), wrt=[w, s])
    rng = np.random.default_rng(5)
    values = {"X": rng.standard_normal((4, 3)), "w": rng.standard_normal((3, 1)), "s": 1.5}
    expected = np.tanh(values["X"] @ values["w"]).sum()
    assert der.evaluate(values)["grad:s"] == pytest.approx(expected, rel=1e-13)
    assert der.compile()(**values).grad["s"] == pytest.approx(expected, rel=1e-13)


def test_latex_document_with_kinks_compiles(tmp_path):
    """Max, Min and Piecewise (cases) in a definition and its backprop equations typeset
    into a PDF."""
    from symdl.printing import latex

    if shutil.which("pdflatex") is None:
        pytest.fail("pdflatex is not installed; " + latex.INSTALL_HINT)
    Z, A, P = (sp.MatrixSymbol(s, n, c) for s, c in (("Z", h), ("A", h), ("P", 1)))
    der = symdl.derive([(Z, X * W), (A, Z.applyfunc(lambda t: sp.Min(sp.Max(-1, t), 1))),
                        (P, A * V), (sp.Symbol("L"), symdl.sum((P - y).applyfunc(
                            _huber_piecewise)))], wrt=[W, V])
    source = latex.document(der)
    assert r"\max" in source and r"\min" in source and r"\begin{cases}" in source
    assert latex.compile_pdf(source, tmp_path / "kinks.pdf").stat().st_size > 0


def test_piecewise_that_is_not_everywhere_defined_is_refused():
    with pytest.raises(UnsupportedError, match="not defined everywhere"):
        symdl.derive(sp.Sum(sp.Piecewise((a[i], a[i] > 0)), (i, 0, n - 1)), wrt=[a])


def test_one_list_of_non_smooth_functions():
    """check's kink detection and the complex step's exclusions come from one list, which
    names every non-smooth function a definition may contain (leaky_relu, absolute and huber
    are built from relu and Abs)."""
    from symdl.primitives.registry import NON_SMOOTH_FUNCTIONS
    from symdl.verify import reference as check_reference
    from symdl.verify import sampling

    assert set(NON_SMOOTH_FUNCTIONS) <= set(check_reference.NOT_COMPLEX_STEPPABLE)
    for body in [sp.Max(0, a[i]), sp.Min(a[i], b[i]), sp.Piecewise((a[i], a[i] > 0), (0, True)),
                 sp.Abs(a[i]), sp.sign(a[i]), sp.Heaviside(a[i]),
                 symdl.primitives.functions.relu(a[i])]:
        assert sampling.has_kink(body), body
    assert not sampling.has_kink(sp.tanh(a[i]))
