"""Bad input, as a table: each case gets a typed error whose message names what is wrong and
how to fix it, or a documented behaviour (README, "Errors and limits") asserted numerically."""

from __future__ import annotations

import time

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.define.limits import MAX_DEPTH, MAX_NODES, DefinitionTooLargeError
from symdl.errors import (
    DefinitionError,
    DerivationError,
    EvaluationError,
    KernelArgumentError,
    UnsupportedError,
)
from symdl.primitives.functions import relu

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
w = sp.MatrixSymbol("w", d, 1)
y = sp.MatrixSymbol("y", n, 1)
x = sp.Symbol("x", real=True)
k_int = sp.Symbol("k", integer=True)
LOSS = symdl.binary_cross_entropy_with_logits(X * w, y)

RNG = np.random.default_rng(0)
XV = RNG.standard_normal((5, 3))
WV = RNG.standard_normal((3, 1))
YV = (RNG.random((5, 1)) > 0.5).astype(float)


@pytest.fixture(scope="module")
def kernel():
    return symdl.derive(LOSS, wrt=[w]).compile()


def _reference(xv, wv, yv):
    """NumPy oracle: mean(softplus(z) - y z), gradient X^T (sigmoid(z) - y) / n."""
    z = xv @ wv
    value = np.mean(np.logaddexp(0.0, z) - yv * z)
    grad = xv.T @ (1.0 / (1.0 + np.exp(-z)) - yv) / xv.shape[0]
    return value, grad


# (id, arguments for the kernel, error type, words the message must contain)
KERNEL_ERRORS = [
    ("wrong-rank-1d", dict(X=XV, w=WV[:, 0], y=YV), ["w", "axes", "reshape"]),
    ("wrong-rank-3d", dict(X=XV[None], w=WV, y=YV), ["X", "2 axes"]),
    ("dims-inconsistent-d", dict(X=XV, w=RNG.standard_normal((4, 1)), y=YV),
     ["w", "d = 4", "d = 3"]),
    ("dims-inconsistent-n", dict(X=XV, w=WV, y=YV[:4]), ["y", "n = 4", "n = 5"]),
    ("wrong-trailing-dim", dict(X=XV, w=WV, y=np.ones((5, 2))), ["y", "shape"]),
    ("missing-argument", dict(X=XV, w=WV), ["missing", "y"]),
    ("unexpected-argument", dict(X=XV, w=WV, y=YV, z=YV), ["unexpected", "z"]),
    ("misspelt-argument", dict(X=XV, W=WV, y=YV), ["missing", "w"]),
    ("int-array", dict(X=XV.astype(np.int64), w=WV, y=YV), ["X", "int64", "astype"]),
    ("bool-array", dict(X=XV > 0, w=WV, y=YV), ["X", "bool", "astype"]),
    ("object-array", dict(X=XV.astype(object), w=WV, y=YV), ["X", "object", "astype"]),
    ("complex-array", dict(X=XV.astype(complex), w=WV, y=YV), ["X", "complex", "astype"]),
    ("float16-array", dict(X=XV.astype(np.float16), w=WV, y=YV), ["X", "float16", "astype"]),
    ("mixed-precision", dict(X=XV.astype(np.float32), w=WV, y=YV), ["float32", "one precision"]),
    ("empty-batch-n0", dict(X=np.zeros((0, 3)), w=WV, y=np.zeros((0, 1))),
     ["X", "empty", "at least 1"]),
    ("zero-d-array", dict(X=np.array(1.0), w=WV, y=YV), ["X", "2 axes", "()"]),
    ("python-scalar", dict(X=1.5, w=WV, y=YV), ["X", "2 axes"]),
    ("none", dict(X=None, w=WV, y=YV), ["X", "object", "astype"]),
    ("string", dict(X="abc", w=WV, y=YV), ["X", "astype"]),
    ("ragged-list", dict(X=[[1.0], [1.0, 2.0]], w=WV, y=YV),
     ["X", "cannot be read", "rectangular"]),
]


@pytest.mark.parametrize("args, words", [c[1:] for c in KERNEL_ERRORS],
                         ids=[c[0] for c in KERNEL_ERRORS])
def test_kernel_argument_errors(kernel, args, words):
    with pytest.raises(KernelArgumentError) as info:
        kernel(**args)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_scalar_parameter_given_a_list():
    k = symdl.derive(x**2, wrt=[x]).compile()
    with pytest.raises(KernelArgumentError, match="x is a scalar parameter: pass a real number"):
        k(x=[1.0])


def test_scalar_parameter_given_a_complex_number():
    k = symdl.derive(x**2, wrt=[x]).compile()
    with pytest.raises(KernelArgumentError, match="pass a real number, got complex"):
        k(x=1j)


# Documented behaviours: asserted against NumPy.

def test_python_lists_are_accepted_as_arrays(kernel):
    value, grad = _reference(XV, WV, YV)
    result = kernel(X=XV.tolist(), w=WV.tolist(), y=YV.tolist())
    assert result.value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(result.grad["w"], grad, rtol=1e-12)


@pytest.mark.parametrize("layout", ["fortran", "strided-slice", "transpose-view"])
def test_non_contiguous_arrays_are_copied(kernel, layout):
    if layout == "fortran":
        xs = np.asfortranarray(XV)
    elif layout == "strided-slice":
        big = np.zeros((10, 6))
        big[::2, ::2] = XV
        xs = big[::2, ::2]
    else:
        xs = np.ascontiguousarray(XV.T).T
    assert not xs.flags.c_contiguous
    value, grad = _reference(XV, WV, YV)
    result = kernel(X=xs, w=WV, y=YV)
    assert result.value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(result.grad["w"], grad, rtol=1e-12)


@pytest.mark.parametrize("special", [np.nan, np.inf])
def test_nan_and_inf_propagate(kernel, special):
    xs = XV.copy()
    xs[2, 1] = special
    result = kernel(X=xs, w=WV, y=YV)
    assert not np.isfinite(result.value)
    assert not np.all(np.isfinite(result.grad["w"]))


def test_relu_derivative_at_zero_is_zero():
    k = symdl.derive(relu(x), wrt=[x]).compile()
    result = k(x=0.0)
    assert result.value == 0.0 and result.grad["x"] == 0.0
    assert k(x=1e-300).grad["x"] == 1.0 and k(x=-1e-300).grad["x"] == 0.0


def test_abs_derivative_at_zero_is_zero():
    k = symdl.derive(sp.Abs(x), wrt=[x]).compile()
    assert k(x=0.0).grad["x"] == 0.0
    assert k(x=2.0).grad["x"] == 1.0 and k(x=-2.0).grad["x"] == -1.0


# Definitions.

def test_undefined_function():
    f = sp.Function("f")
    with pytest.raises(UnsupportedError, match="undefined function f.*Lambda"):
        symdl.derive(f(x), wrt=[x])


@pytest.mark.parametrize("fn", [sp.gamma, sp.zeta, sp.asinh], ids=["gamma", "zeta", "asinh"])
def test_unsupported_function(fn):
    with pytest.raises(UnsupportedError) as info:
        symdl.derive(fn(x) + x, wrt=[x])
    assert fn.__name__ in str(info.value) and "supported scalar functions" in str(info.value)


def test_piecewise_not_defined_everywhere():
    # A Piecewise ending with (value, True) is supported (tests/test_kinks.py); one that
    # leaves inputs undefined has no value to compile there.
    with pytest.raises(UnsupportedError, match="not defined everywhere.*True"):
        symdl.derive(sp.Piecewise((x, x > 0)), wrt=[x])


def test_piecewise_condition_that_is_not_a_comparison():
    with pytest.raises(UnsupportedError, match="condition.*Contains"):
        symdl.derive(sp.Piecewise((x, sp.Contains(x, sp.Interval(0, 1))), (0, True)), wrt=[x])


def test_free_symbol_not_in_wrt_is_an_input_and_must_be_given():
    b = sp.Symbol("b", real=True)
    der = symdl.derive(b * x**2, wrt=[x])
    k = der.compile()
    assert k(x=3.0, b=2.0).grad["x"] == pytest.approx(12.0)
    with pytest.raises(KernelArgumentError, match="missing arguments: b"):
        k(x=3.0)
    with pytest.raises(EvaluationError, match="no value given for b"):
        der.evaluate({"x": 3.0})


@pytest.mark.parametrize("bad", [X * w, 3, "w", sp.Integer(3), 2.5],
                         ids=["expression", "int", "string", "sympy-number", "float"])
def test_derivative_with_respect_to_a_non_symbol(bad):
    with pytest.raises(DerivationError) as info:
        symdl.derive(LOSS, wrt=[bad])
    assert "a parameter must be a Symbol, MatrixSymbol or IndexedBase" in str(info.value)


def test_integer_symbol_as_parameter():
    with pytest.raises(DerivationError, match="k is declared integer.*real=True"):
        symdl.derive(k_int * x**2, wrt=[k_int])


def test_integer_symbol_as_a_constant_is_fine():
    der = symdl.derive(k_int * x**2, wrt=[x])
    assert sp.simplify(der.gradient(x) - 2 * k_int * x) == 0


def test_wrt_a_symbol_that_does_not_occur_has_zero_gradient():
    a = sp.Symbol("a", real=True)
    der = symdl.derive(x**2, wrt=[x, a])
    assert der.gradient(a) == 0
    assert der.compile()(x=1.5, a=7.0).grad["a"] == 0.0


def test_gradient_of_a_non_scalar_definition():
    with pytest.raises(DerivationError, match="not a scalar.*(sum|mean)"):
        symdl.derive(X * w, wrt=[w]).gradient(w)


def test_gradient_for_a_parameter_not_in_wrt():
    with pytest.raises(DerivationError, match="add it to wrt"):
        symdl.derive(LOSS, wrt=[w]).gradient(X)


def test_model_step_that_is_not_a_pair():
    with pytest.raises(DefinitionError, match="list of \\(symbol, definition\\) pairs"):
        symdl.derive([X * w], wrt=[w])


def test_expression_too_deep_fails_fast():
    e = x
    for _ in range(2000):
        e = sp.sin(e, evaluate=False)
    start = time.perf_counter()
    with pytest.raises(DefinitionTooLargeError, match="nested more than .*named steps"):
        symdl.derive(e, wrt=[x])
    assert time.perf_counter() - start < 2.0


def test_expression_too_wide_fails_fast():
    e = sp.Add(x, *sp.symbols(f"c0:{MAX_NODES + 1}", real=True), evaluate=False)
    start = time.perf_counter()
    with pytest.raises(DefinitionTooLargeError, match="distinct subexpressions.*named steps"):
        symdl.derive(e, wrt=[x])
    assert time.perf_counter() - start < 2.0


def test_depth_just_under_the_limit_derives():
    e = x
    for _ in range(MAX_DEPTH - 1):
        e = sp.sin(e)
    der = symdl.derive(e, wrt=[x])
    value = 0.3
    expected = 1.0
    for _ in range(MAX_DEPTH - 1):
        expected *= np.cos(value)
        value = np.sin(value)
    assert der.compile()(x=0.3).grad["x"] == pytest.approx(expected, rel=1e-12)


# Arguments of derive() (issue 15, item 14): typed errors that say what to pass.

DERIVE_ARGUMENT_ERRORS = [
    ("wrt-none", lambda: symdl.derive(LOSS, wrt=None), DerivationError, ["wrt=[", "w"]),
    ("definition-none", lambda: symdl.derive(None, wrt=[w]), DefinitionError,
     ["None", "return"]),
    ("step-none", lambda: symdl.derive([(sp.Symbol("L"), None)], wrt=[w]), DefinitionError,
     ["definition of L is None"]),
    ("wrt-string", lambda: symdl.derive(LOSS, wrt="w"), DerivationError,
     ["string", "symbol objects"]),
    ("wrt-int", lambda: symdl.derive(LOSS, wrt=3), DerivationError, ["list of parameters"]),
    ("hessian-string", lambda: symdl.derive(LOSS, wrt=[w], hessian="yes"), DerivationError,
     ["True or False"]),
    ("definition-string", lambda: symdl.derive("x**2", wrt=[x]), DefinitionError,
     ["string", "SymPy symbols"]),
    ("definition-ndarray", lambda: symdl.derive(np.ones(3), wrt=[x]), DefinitionError,
     ["explicit array", "MatrixSymbol"]),
    ("definition-matrix", lambda: symdl.derive(sp.Matrix([x, x]), wrt=[x]), DefinitionError,
     ["explicit array", "MatrixSymbol"]),
    ("definition-condition", lambda: symdl.derive(x > 0, wrt=[x]), DefinitionError,
     ["condition", "Piecewise"]),
    ("definition-true", lambda: symdl.derive(sp.true, wrt=[x]), DefinitionError,
     ["condition"]),
    ("definition-lambda", lambda: symdl.derive(sp.Lambda(x, x**2), wrt=[x]), DefinitionError,
     ["function", "apply it"]),
    ("definition-object", lambda: symdl.derive(object(), wrt=[x]), DefinitionError,
     ["SymPy expression"]),
]


@pytest.mark.parametrize("call, error, words", [c[1:] for c in DERIVE_ARGUMENT_ERRORS],
                         ids=[c[0] for c in DERIVE_ARGUMENT_ERRORS])
def test_derive_argument_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# Constructs that derive() accepted and compile() or the first call refused with an untyped
# error (mpmath's TypeError, SymPy's printer error, Numba's TypingError): refused by derive()
# itself with UnsupportedError naming the construct.

t_int = sp.Symbol("t", real=True)
NOT_COMPILABLE = [
    ("imaginary-unit", sp.I * x, "not a real number"),
    ("imaginary-power", x**sp.I, "not a real number"),
    ("sqrt-of-negative", sp.sqrt(-2) * x, "not a real number"),
    ("log-of-negative", sp.log(-1) * x, "not a real number"),
    ("complex-root", x * (-1) ** sp.Rational(1, 3), "not a real number"),
    ("infinite-exponent", x**sp.oo, "not finite"),
    ("huge-integer", x * sp.Integer(10) ** 400, "float64"),
    ("huge-rational", x * sp.Rational(10**400, 3), "Rational"),
    ("zeta-constant", sp.zeta(3) * x, "zeta"),
    ("exp-polar", sp.exp_polar(2) * x, "exp_polar"),
    ("accumulation-bounds", sp.AccumBounds(0, 1) * x, "AccumulationBounds"),
    ("constant-integral", sp.Integral(t_int**2, (t_int, 0, 1)) * x, "Integral"),
    ("matrix-imaginary", symdl.sum(sp.I * X * w), "not a real number"),
    ("applyfunc-infinity", symdl.sum((X * w).applyfunc(lambda u: u * sp.oo)), "not finite"),
    ("applyfunc-nan", symdl.sum((X * w).applyfunc(lambda u: u + sp.nan)), "not finite"),
    ("applyfunc-imaginary", symdl.sum((X * w).applyfunc(lambda u: sp.I * u)),
     "not a real number"),
    ("hadamard-power-infinity", symdl.sum(sp.HadamardPower(X * w, sp.oo)), "not finite"),
    ("applyfunc-integral",
     symdl.sum((X * w).applyfunc(lambda u: sp.Integral(u * t_int, (t_int, 0, 1)))), "Integral"),
    ("applyfunc-derivative",
     symdl.sum((X * w).applyfunc(lambda u: sp.Derivative(u**3, u, evaluate=False))),
     "Derivative"),
]


@pytest.mark.parametrize("definition, words", [c[1:] for c in NOT_COMPILABLE],
                         ids=[c[0] for c in NOT_COMPILABLE])
def test_what_a_kernel_cannot_compute_is_refused_by_derive(definition, words):
    wrt = [w] if definition.has(w) else [x]
    with pytest.raises(UnsupportedError) as info:
        symdl.derive(definition, wrt=wrt)
    assert words in str(info.value), str(info.value)


def test_a_refused_body_is_refused_by_compile_expressions_too():
    """The same check guards kernels built without derive (update rules, forward passes)."""
    with pytest.raises(UnsupportedError, match="not a real number"):
        symdl.compile_expressions({"y": (X * w).applyfunc(lambda u: sp.I * u)})


@pytest.mark.parametrize("definition, expected", [
    (sp.pi * x + sp.E * x**2 + sp.EulerGamma * x, np.pi + 2 * np.e + 0.5772156649015329),
    (sp.gamma(sp.Rational(1, 3)) * x, 2.678938534707747),
    (x * sp.Float("1e-400"), 0.0),
    (sp.re(1 + sp.I) * x, 1.0),
], ids=["number-symbols", "gamma-constant", "underflowing-constant", "real-part"])
def test_real_constants_still_compile(definition, expected):
    k = symdl.derive(definition, wrt=[x]).compile(jit=False)
    assert k(x=1.0).grad["x"] == pytest.approx(expected, rel=1e-14)


# Found by fuzzing bad arguments (issue 15, item 14): each was an AttributeError, TypeError or
# ValueError from inside symdl, NumPy or SymPy.

def _mse_derivation():
    return symdl.derive(symdl.mse(X * w, y), wrt=[w])


MORE_ERRORS = [
    ("evaluate-none", lambda: _mse_derivation().evaluate(None), EvaluationError, ["dict"]),
    ("evaluate-list", lambda: _mse_derivation().evaluate([XV]), EvaluationError, ["dict"]),
    ("evaluate-string-array",
     lambda: _mse_derivation().evaluate({"X": "abc", "w": WV, "y": YV}), EvaluationError,
     ["X", "real numbers"]),
    ("symdl-evaluate-no-dims",
     lambda: symdl.evaluate(_mse_derivation().gradient(w), {"X": XV, "w": WV, "y": YV}, None),
     EvaluationError, ["dims", "{n: 5"]),
    ("compile-expressions-none", lambda: symdl.compile_expressions(None), DefinitionError,
     ["dict"]),
    ("compile-expressions-list", lambda: symdl.compile_expressions([X * w]), DefinitionError,
     ["dict"]),
    ("compile-expressions-empty", lambda: symdl.compile_expressions({}), DefinitionError,
     ["non-empty"]),
    ("compile-expressions-none-value", lambda: symdl.compile_expressions({"a": None}),
     DefinitionError, ["'a'", "None"]),
    ("compile-expressions-int-name", lambda: symdl.compile_expressions({1: X * w}),
     DefinitionError, ["strings"]),
    ("kernel-positional", lambda: _mse_derivation().compile(jit=False)(XV, WV, YV),
     KernelArgumentError, ["by name", "X=..."]),
    ("kernel-parallel-string",
     lambda: _mse_derivation().compile(jit=False)(X=XV, w=WV, y=YV, parallel="no"),
     KernelArgumentError, ["parallel=", "True, False or None"]),
]


@pytest.mark.parametrize("call, error, words", [c[1:] for c in MORE_ERRORS],
                         ids=[c[0] for c in MORE_ERRORS])
def test_more_argument_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("value, words", [
    ("1e-3", "number or a scalar SymPy expression"), (float("inf"), "finite real"),
    (float("nan"), "finite real"), (1j, "finite real")], ids=["string", "inf", "nan", "complex"])
def test_optimizer_hyperparameter_errors(value, words):
    from symdl.define.optimizers import Adam

    with pytest.raises(DefinitionError, match=words):
        Adam(lr=value)


def test_training_step_argument_errors():
    from symdl.define.optimizers import SGD
    from symdl.training import TrainingStep

    der = _mse_derivation()
    with pytest.raises(DerivationError, match="needs a Derivation"):
        TrainingStep(None, SGD(lr=0.1), {"w": WV})
    with pytest.raises(DerivationError, match="state_names and update"):
        TrainingStep(der, None, {"w": WV})
    with pytest.raises(KernelArgumentError, match="params must be a dict"):
        TrainingStep(der, SGD(lr=0.1), [WV])
    with pytest.raises(KernelArgumentError, match="hyperparameters must be a dict"):
        TrainingStep(der, SGD(lr=0.1), {"w": WV}, hyperparameters=[1.0])
    with pytest.raises(KernelArgumentError, match=r"\['q'\] are not parameters"):
        TrainingStep(der, SGD(lr=0.1), {"w": WV, "q": WV}, jit=False)


def test_latex_of_a_power_of_symdl_functions():
    """``sigmoid(x)**3`` made SymPy's LaTeX printer pass ``exp=`` to ``sigmoid._latex``,
    which did not take it (TypeError)."""
    from symdl.primitives.functions import floor, sigmoid, softplus

    for f, word in ((sigmoid, r"\sigma"), (softplus, "softplus"), (relu, "relu"),
                    (floor, r"\lfloor")):
        text = sp.latex(f(x) ** 3)
        assert word in text and text.endswith("^{3}"), text
    assert r"\sigma\left(x\right)^{3}" in symdl.derive(sigmoid(x) ** 3, wrt=[x]).to_latex()
