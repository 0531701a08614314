"""silu, exact gelu, elu, softsign, log1p and expm1 against PyTorch (value, gradient and second
derivative by torch.autograd.grad twice) and against their closed forms in 60-digit mpmath,
at ordinary and extreme inputs, through ``symdl.evaluate`` and through one compiled kernel
(float64 and float32).

Two oracles because PyTorch itself loses the tails in places (``F.gelu(-30)`` is -0, the true
value -1.5e-196; ``silu''(30)`` is 1e-3 off): PyTorch is matched to an absolute 1e-14 (any
wrong formula, branch or kink convention shows), mpmath to 2e-13 relative (the tails)."""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

import symdl

n = sp.Symbol("n", integer=True, positive=True)
WIDE = [-1e4, -700.0, -30.0, -2.5, -1e-8, 0.0, 1e-8, 0.7, 3.0, 30.0, 700.0, 1e4]
ALPHA = 1.5

mp.mp.dps = 60


def _sig(x):
    return 1 / (1 + mp.exp(-x))


def _phi(x):
    return mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)


def _sign(x):
    return (x > 0) - (x < 0)


# name: (symdl vocabulary, torch function, inputs, (f, f', f'') in mpmath)
CASES = {
    "silu": (symdl.silu, F.silu, WIDE, (
        lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * _sig(-x)),
        lambda x: _sig(x) * _sig(-x) * (2 + x * (_sig(-x) - _sig(x))))),
    "gelu": (lambda m: symdl.gelu(m, approximate="none"), F.gelu, WIDE, (
        lambda x: x * mp.erfc(-x / mp.sqrt(2)) / 2,
        lambda x: mp.erfc(-x / mp.sqrt(2)) / 2 + x * _phi(x), lambda x: (2 - x * x) * _phi(x))),
    "elu": (lambda m: symdl.elu(m, ALPHA), lambda t: F.elu(t, ALPHA), WIDE, (
        lambda x: x if x > 0 else ALPHA * mp.expm1(x),
        lambda x: 1 if x > 0 else ALPHA * mp.exp(x),
        # PyTorch's convention at the kink: elu''(0) = 0.
        lambda x: 0 if x >= 0 else ALPHA * mp.exp(x))),
    "softsign": (symdl.softsign, F.softsign, WIDE, (
        lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x))**2,
        lambda x: -2 * _sign(x) / (1 + abs(x))**3)),
    "log1p": (symdl.log1p, torch.log1p,
              [-0.999, -0.5, -1e-8, 0.0, 1e-8, 0.7, 3.0, 30.0, 700.0, 1e4, 1e8, 1e300], (
                  mp.log1p, lambda x: 1 / (1 + x), lambda x: -1 / (1 + x)**2)),
    # exp(1e4) overflows: the largest input is one whose derivatives are finite.
    "expm1": (symdl.expm1, torch.expm1,
              [-1e4, -700.0, -30.0, -2.5, -1e-8, 0.0, 1e-8, 0.7, 3.0, 30.0, 700.0, 709.0], (
                  mp.expm1, mp.exp, mp.exp)),
}


def _torch(name: str, dtype=torch.float64) -> list[np.ndarray]:
    _, f, points, _ = CASES[name]
    t = torch.tensor(points, dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(f(t).sum(), t, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), t)
    return [f(t).detach().numpy(), g.detach().numpy(), h.numpy()]


def _mpmath(name: str, points=None) -> list[np.ndarray]:
    _, _, default, forms = CASES[name]
    points = default if points is None else points
    return [np.array([float(form(mp.mpf(float(x)))) for x in points]) for form in forms]


def _float32_points(name: str) -> np.ndarray:
    """The case's inputs within float32's range: |x| <= 80 (exp(88) overflows float32)."""
    return np.clip(np.array(CASES[name][2]), -80, 80).astype(np.float32)


def _exact_atol(name: str, order: int) -> float:
    # gelu's derivatives are written with 1 + erf(x/√2) (SymPy turns erfc(-u) into
    # 2 - erfc(u)), which cancels for x < -5: there they are exact in absolute terms only, as
    # PyTorch's. Its value is computed with erfc: relative accuracy everywhere.
    return 1e-16 if name == "gelu" and order > 0 else 0.0


def _check(name: str, got: list[np.ndarray], first: int = 0) -> None:
    """``got``: derivatives ``first``, ``first + 1``, ... at the case's inputs."""
    for order, (value, torch_value, exact) in enumerate(
            zip(got, _torch(name)[first:], _mpmath(name)[first:], strict=True), start=first):
        what = f"{name}, derivative {order}"
        np.testing.assert_allclose(value, torch_value, rtol=1e-12, atol=1e-14, err_msg=what)
        np.testing.assert_allclose(value, exact, rtol=2e-13, atol=_exact_atol(name, order),
                                   err_msg=what)


@pytest.fixture(scope="module")
def derivations() -> dict[str, symdl.Derivation]:
    return {name: symdl.derive(symdl.total(f(sp.MatrixSymbol("X", n, 1))),
                               wrt=[sp.MatrixSymbol("X", n, 1)])
            for name, (f, *_) in CASES.items()}


@pytest.mark.parametrize("name", CASES)
def test_evaluate_against_torch_and_mpmath(name: str, derivations) -> None:
    X = sp.MatrixSymbol("X", n, 1)
    f, _, points, _ = CASES[name]
    der = derivations[name]
    values, dims = {"X": np.array(points)[:, None]}, {n: len(points)}
    # No overflow, no NaN anywhere, also in the branches a select discards.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = [np.ravel(symdl.evaluate(e, values, dims))
               for e in (f(X), der.gradient(X), der.hvp(X, sp.OneMatrix(n, 1)))]
    _check(name, got)


@pytest.fixture(scope="module")
def kernel() -> tuple[symdl.Kernel, dict[str, sp.MatrixSymbol]]:
    """One kernel for all six: a sum of separate terms, one input each."""
    xs = {name: sp.MatrixSymbol(f"X_{name}", n, 1) for name in CASES}
    loss = sp.Add(*(symdl.total(CASES[name][0](x)) for name, x in xs.items()))
    return symdl.derive(loss, wrt=list(xs.values())).compile(hvp=True), xs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_kernel_against_torch_and_mpmath(dtype, kernel) -> None:
    compiled, _ = kernel
    points = {name: np.array(CASES[name][2]) if dtype == np.float64 else _float32_points(name)
              for name in CASES}
    values = {f"X_{name}": x.astype(dtype)[:, None] for name, x in points.items()}
    values.update({compiled.hvp_inputs[f"X_{name}"]: np.ones((len(WIDE), 1), dtype=dtype)
                   for name in CASES})
    out = compiled(**values)
    # The value is the sum of every term.
    total = sum(float(np.sum(_mpmath(name, x)[0])) for name, x in points.items())
    np.testing.assert_allclose(out.value, total, rtol=1e-12 if dtype == np.float64 else 1e-6)
    for name in CASES:
        got = [np.ravel(out.grad[f"X_{name}"]), np.ravel(out.hvp[f"X_{name}"])]
        assert all(g.dtype == dtype for g in got)
        if dtype == np.float64:
            _check(name, got, first=1)
        else:  # the exact derivatives at the float32 inputs, rounded to float32
            exact = [e.astype(np.float32) for e in _mpmath(name, points[name])[1:]]
            for order, (g, e) in enumerate(zip(got, exact, strict=True), start=1):
                np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-37,
                                           err_msg=f"{name}, derivative {order}, float32")


@pytest.mark.parametrize("name", CASES)
def test_sympy_lambdify_of_a_result_is_stable(name: str) -> None:
    """A derived formula handed to ``sympy.lambdify(..., "numpy")`` computes each function
    in a stable form too (no overflow warning, the tails right)."""
    f, _, points, _ = CASES[name]
    t = sp.Symbol("t", real=True)
    fn = sp.lambdify(t, f(t), "numpy")
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = fn(np.array(points))
    np.testing.assert_allclose(got, _mpmath(name)[0], rtol=2e-13, atol=0)
