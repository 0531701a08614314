"""Scalar functions: the deep-learning primitives SymPy lacks, and the registry of what symdl
differentiates and evaluates.

Elementwise layers are scalar functions applied entry by entry. SymPy already has ``exp``,
``log`` and ``tanh``; this module adds ``sigmoid``, ``softplus`` and ``relu`` as SymPy
``Function`` classes, so they differentiate, print and substitute like any SymPy function.

Three tables drive the rest of symdl:

* ``SUPPORTED_FUNCTIONS``: the scalar functions a definition may use. Anything else raises
  ``UnsupportedError`` naming the function.
* ``OUTPUT_DERIVATIVES``: derivatives written in terms of the function's output ``y``
  (``tanh' = 1 - y**2``), so backprop reuses the forward activations (``1 - A1 ⊙ A1``).
* ``STABILITY_REWRITES``: rewrites from overflow-prone forms to stable ones, applied after
  every differentiation (``exp(x)/(exp(x) + 1)`` -> ``sigmoid(x)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import sympy as sp

from symdl.errors import UnsupportedError


class sigmoid(sp.Function):  # noqa: N801 - SymPy function classes are lower case
    """The logistic function ``1 / (1 + exp(-x))``."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_zero:
            return sp.Rational(1, 2)
        return None

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs) -> sp.Expr:
        return 1 / (1 + sp.exp(-x))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec)

    def _latex(self, printer) -> str:
        return rf"\sigma\left({printer._print(self.args[0])}\right)"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.sympy_results import numpy_call

        return numpy_call(printer, "sigmoid", self.args[0])


class softplus(sp.Function):  # noqa: N801
    """``log(1 + exp(x))``, evaluated without overflow."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0])

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_zero:
            return sp.log(2)
        return None

    def _eval_rewrite_as_log(self, x: sp.Expr, **kwargs) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec)

    def _latex(self, printer) -> str:
        return rf"\operatorname{{softplus}}\left({printer._print(self.args[0])}\right)"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.sympy_results import numpy_call

        return numpy_call(printer, "softplus", self.args[0])


class relu(sp.Function):  # noqa: N801
    """``max(x, 0)``. Its derivative at 0 is taken as 0 (``Heaviside(x, 0)``)."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.Heaviside(self.args[0], 0)

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number and x.is_extended_real:
            return sp.Max(x, 0)
        return None

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return sp.Max(self.args[0], 0)._eval_evalf(prec)

    def _latex(self, printer) -> str:
        return rf"\operatorname{{relu}}\left({printer._print(self.args[0])}\right)"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.sympy_results import numpy_call

        return numpy_call(printer, "relu", self.args[0])


class floor(sp.Function):  # noqa: N801
    """The largest integer <= x (step schedules). Piecewise constant: its derivative is taken
    as 0, the value wherever it exists (at the jumps there is none)."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.Integer(0)

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number:
            return sp.floor(x)
        return None

    def _latex(self, printer) -> str:
        return rf"\left\lfloor {printer._print(self.args[0])} \right\rfloor"


SUPPORTED_FUNCTIONS: tuple[type, ...] = (
    sp.exp, sp.log, sp.tanh, sp.sin, sp.cos, sp.Abs, sp.sign, sp.Heaviside, sp.erf,
    sigmoid, softplus, relu, floor,
)
"""Scalar functions a definition may contain; powers, sums and products are always allowed."""


OUTPUT_DERIVATIVES: dict[type, Callable[[sp.Symbol], sp.Expr]] = {
    sp.tanh: lambda y: 1 - y**2,
    sigmoid: lambda y: y * (1 - y),
    sp.exp: lambda y: y,
}
"""f'(x) written in terms of y = f(x): backprop then reuses the stored activation."""


def _stability_rules() -> tuple[tuple[sp.Expr, sp.Expr], ...]:
    x = sp.Wild("x")
    return (
        (sp.exp(x) / (sp.exp(x) + 1), sigmoid(x)),
        (1 / (1 + sp.exp(-x)), sigmoid(x)),
        (sp.exp(-x) / (1 + sp.exp(-x)), sigmoid(-x)),
        (sp.log(1 + sp.exp(x)), softplus(x)),
        (sp.log(sigmoid(x)), -softplus(-x)),
        (sp.log(1 - sigmoid(x)), -softplus(x)),
    )


STABILITY_REWRITES = _stability_rules()
"""(pattern, replacement) pairs: the unstable form on the left never reaches a kernel."""


def stabilize(expr: sp.Expr) -> sp.Expr:
    """Rewrites overflow-prone scalar forms to stable ones (see ``STABILITY_REWRITES``)."""
    for pattern, replacement in STABILITY_REWRITES:
        expr = expr.replace(pattern, replacement)
    return expr


def check_supported(expr: sp.Expr) -> None:
    """Raises ``UnsupportedError`` naming the first scalar function symdl cannot handle."""
    for f in expr.atoms(sp.Function):
        if isinstance(f, sp.core.function.AppliedUndef):
            raise UnsupportedError(
                f"undefined function {f.func.__name__}() in a definition: symdl needs a "
                f"concrete function; use one of {supported_names()} or define it as a Lambda"
            )
        if not isinstance(f, SUPPORTED_FUNCTIONS):
            raise UnsupportedError(
                f"function {f.func.__name__}() is not supported by symdl; supported scalar "
                f"functions: {supported_names()}. Rewrite it with these, or open an issue"
            )
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Piecewise, sp.Max, sp.Min)):
            raise UnsupportedError(
                f"{type(node).__name__} in a definition is not supported: use relu, Abs or "
                "Heaviside, which have a stated derivative convention at the kink"
            )


def supported_names() -> str:
    return ", ".join(f.__name__ for f in SUPPORTED_FUNCTIONS)


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only: no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _np_softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _np_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _np_heaviside(x: np.ndarray, h0: float = 0.0) -> np.ndarray:
    return np.heaviside(x, h0)


NUMPY_IMPLEMENTATIONS: dict[str, Callable] = {
    "sigmoid": _np_sigmoid,
    "softplus": _np_softplus,
    "relu": _np_relu,
    "Heaviside": _np_heaviside,
    "floor": np.floor,
}
"""Stable NumPy versions of the functions, for ``sympy.lambdify``'s ``modules``."""


def numpy_function(args: tuple[sp.Symbol, ...], body: sp.Expr) -> Callable:
    """Compiles a scalar SymPy body into a vectorised NumPy function of ``args``."""
    modules = [NUMPY_IMPLEMENTATIONS, {"erf": np.vectorize(math.erf, otypes=[float])}, "numpy"]
    return sp.lambdify(args, body, modules=modules)
