"""Every entry of the primitive registry is complete and agrees with itself: NumPy and Numba
implementations with the SymPy definition (mpmath), the derivative with ``sympy.diff`` of the
definition, names with how SymPy and the kernel printer print the function. This is what
makes "adding a primitive = one entry" true: an entry that disagrees anywhere fails here."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.errors import DefinitionError
from symdl.kernels.scalar_code import HELPERS, ScalarPrinter, helper_source, jitted_helpers
from symdl.primitives import numba_impl
from symdl.primitives.registry import (
    NON_SMOOTH_FUNCTIONS,
    NOT_COMPLEX_STEPPABLE,
    PRIMITIVES,
    SUPPORTED_FUNCTIONS,
    Primitive,
)

x = sp.Symbol("x", real=True)
SECOND = 0.75  # the second argument of two-argument primitives (Heaviside's h0, elu's alpha)
# Away from every kink (0, the integers) and inside every domain once shifted (log: x > 0).
POINTS = [-3.7, -1.3, -0.4, 0.3, 0.6, 1.2, 2.9, 5.5]
DOMAIN = {"log": lambda v: v > 0, "log1p": lambda v: v > -1}


def _args(entry: Primitive, v: float) -> list[float]:
    return [v] if entry.arity == 1 else [v, SECOND]


def _points(name: str) -> list[float]:
    return [v for v in POINTS if DOMAIN.get(name, lambda _: True)(v)]


def _symbolic(entry: Primitive) -> list[sp.Expr]:
    return [x] if entry.arity == 1 else [x, sp.Float(SECOND)]


@pytest.fixture(scope="module")
def helpers() -> dict:
    return jitted_helpers(cache=False)


@pytest.mark.parametrize("name", PRIMITIVES)
def test_entry_is_complete(name: str) -> None:
    entry = PRIMITIVES[name]
    assert entry.function.__name__ == name
    assert callable(entry.definition) and callable(entry.numpy)
    assert entry.derivative is not None or entry.arity is None  # variadic: its class's fdiff
    assert entry.numba and entry.text and "#" in entry.latex
    assert entry.kink is None or (entry.kink and not entry.analytic)
    assert (name in NON_SMOOTH_FUNCTIONS) == (entry.kink is not None)
    assert (name in NOT_COMPLEX_STEPPABLE) == (not entry.analytic)
    assert entry.function in SUPPORTED_FUNCTIONS
    if entry.numba.startswith("_"):
        assert callable(getattr(numba_impl, entry.numba))
    else:
        module, _, attr = entry.numba.rpartition(".")
        assert callable(getattr(math, attr) if module == "math" else getattr(__builtins__,
                                                                                attr, abs))


@pytest.mark.parametrize("name", PRIMITIVES)
def test_implementations_agree_with_the_definition(name: str, helpers) -> None:
    entry = PRIMITIVES[name]
    args = _symbolic(entry) if entry.arity else [x, sp.Float(SECOND)]
    definition = entry.definition(*args)
    for v in _points(name):
        exact = float(definition.subs(x, v).evalf(30))
        numeric = _args(entry, v) if entry.arity else [v, SECOND]
        numpy_value = float(entry.numpy(*[np.float64(a) for a in numeric]))
        if entry.numba.startswith("_"):
            numba_value = helpers[entry.numba](*numeric)
        elif entry.numba == "abs":
            numba_value = abs(*numeric)
        else:
            numba_value = getattr(math, entry.numba.split(".")[1])(*numeric)
        # SymPy's own class evaluated numerically: the class and the entry mean the same.
        own = float(entry.function(*args).subs(x, v).evalf(30))
        for got in (numpy_value, numba_value, own):
            assert got == pytest.approx(exact, rel=1e-14, abs=1e-300), (name, v, got, exact)


@pytest.mark.parametrize("name", [n for n, p in PRIMITIVES.items() if p.derivative])
def test_derivative_agrees_with_sympy_diff_of_the_definition(name: str) -> None:
    entry = PRIMITIVES[name]
    args = _symbolic(entry)
    by_sympy = sp.diff(entry.definition(*args), x)
    if by_sympy.has(sp.Derivative):  # SymPy leaves floor' unevaluated: 0 off the integers
        assert name == "floor"
        by_sympy = sp.Integer(0)
    by_class = sp.diff(entry.function(*args), x)  # what autodiff differentiates
    derivative = entry.derivative(*args)
    for v in _points(name):
        want = float(by_sympy.subs(x, v).evalf(30))
        for got in (derivative, by_class):
            assert float(got.subs(x, v).evalf(30)) == pytest.approx(want, rel=1e-13, abs=1e-300)
        if entry.output_derivative is not None:
            y = entry.function(*args).subs(x, v)
            assert float(entry.output_derivative(y).evalf(30)) == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("name", PRIMITIVES)
def test_names_are_how_the_function_prints(name: str) -> None:
    entry = PRIMITIVES[name]
    args = _symbolic(entry) if entry.arity else [x, sp.Float(SECOND)]
    call = entry.function(*args)
    assert str(call).startswith(entry.text + "(")
    if hasattr(entry.function, "registry_entry"):  # symdl's own: LaTeX from the entry
        assert entry.function.registry_entry is entry
        assert sp.latex(call) == entry.latex.replace("#", ", ".join(map(sp.latex, args)))
    if entry.numba.startswith("_"):
        names = {x: "x"}
        assert ScalarPrinter(names).doprint(call).startswith(entry.numba + "(")


def test_kernel_helpers_are_the_text_every_cached_kernel_was_keyed_on() -> None:
    """The always-present helpers are byte for byte the text kernels carried before the
    helpers moved into a module (the cache is keyed on the text); the helpers of the new
    primitives come only into the kernels that call them."""
    digest = hashlib.sha256(HELPERS.encode()).hexdigest()
    assert digest == "8026b9fba88342e28bc017c2aeea062b1dfbb9d0ed754724e305d02a333f5eee"
    assert helper_source(["    y = _tanh(x)"]) == HELPERS
    with_silu = helper_source(["    y = _silu(x) + _elu(x, 1.0)"])
    assert with_silu.startswith(HELPERS) and "def _silu(" in with_silu
    assert "def _elu(" in with_silu and "def _gelu(" not in with_silu
    registry_helpers = {p.numba for p in PRIMITIVES.values() if p.numba.startswith("_")}
    module_helpers = {f.__name__ for f in (*numba_impl.ALWAYS, *numba_impl.ON_DEMAND)}
    assert registry_helpers <= module_helpers


def test_gelu_forms_and_bad_arguments() -> None:
    n = sp.Symbol("n", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, 1)
    v = np.array([[-2.0], [0.5], [3.0]])
    tanh_form = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
    exact = v * (1 + np.vectorize(math.erf)(v / math.sqrt(2))) / 2
    dims = {n: 3}
    # The default stays the tanh form (existing definitions keep their results).
    np.testing.assert_allclose(symdl.evaluate(symdl.gelu(X), {"X": v}, dims), tanh_form)
    np.testing.assert_allclose(symdl.evaluate(symdl.gelu(X, approximate="tanh"), {"X": v},
                                              dims), tanh_form)
    np.testing.assert_allclose(symdl.evaluate(symdl.gelu(X, approximate="none"), {"X": v},
                                              dims), exact, rtol=1e-15)
    with pytest.raises(DefinitionError, match="approximate"):
        symdl.gelu(X, approximate="erf")
    with pytest.raises(DefinitionError, match="alpha"):
        symdl.elu(X, X)


def test_elu_alpha_as_a_parameter() -> None:
    """A symbolic alpha gets its derivative: sum over x <= 0 of expm1(x) (PyTorch agrees)."""
    import torch

    n = sp.Symbol("n", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, 1)
    a = sp.Symbol("a")
    v = np.array([-800.0, -2.0, -1e-9, 0.0, 0.5, 900.0])
    der = symdl.derive(symdl.total(symdl.elu(X, a)), wrt=[a])
    with np.errstate(over="raise", invalid="raise"):
        got = float(symdl.evaluate(der.gradient(a), {"X": v[:, None], "a": 1.3}, {n: 6}))
    alpha = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.elu  # noqa: B018 - F.elu takes alpha as a float: write it out
    t = torch.tensor(v, dtype=torch.float64)
    y = torch.where(t > 0, t, alpha * torch.expm1(torch.clamp(t, max=0))).sum()
    (want,) = torch.autograd.grad(y, alpha)
    assert got == pytest.approx(float(want), rel=1e-14)
