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


def _power(latex: str, exp: str | None) -> str:
    """SymPy's LaTeX printer passes the exponent of ``f(x)**p`` to ``f._latex`` as ``exp``."""
    return latex if exp is None else rf"{latex}^{{{exp}}}"


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

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\sigma\left({printer._print(self.args[0])}\right)", exp)


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

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\operatorname{{softplus}}\left({printer._print(self.args[0])}\right)",
                      exp)


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

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\operatorname{{relu}}\left({printer._print(self.args[0])}\right)", exp)


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

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\left\lfloor {printer._print(self.args[0])} \right\rfloor", exp)


class _Extremum(sp.Function):
    """Shared part of ``maximum`` and ``minimum``: SymPy's ``Max``/``Min`` with the arguments
    kept in the order given (SymPy sorts them), so "the first argument wins a tie" means
    something. ``symdl.frontend`` turns every ``Max``/``Min`` of a definition into these."""

    _name = ""
    _numpy = ""
    _sympy: type = sp.Max

    @classmethod
    def eval(cls, *args: sp.Expr) -> sp.Expr | None:
        if len(args) < 2:
            raise UnsupportedError(f"{cls.__name__} needs at least two arguments, got {args}")
        if all(a.is_number for a in args):
            return cls._sympy(*args)
        return None

    def _wins(self, strict: bool, a: sp.Expr, b: sp.Expr) -> sp.Basic:
        raise NotImplementedError

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        # The derivative goes to the first argument that attains the extremum: argument k
        # must beat every earlier one strictly and tie-or-beat every later one.
        k = argindex - 1
        a = self.args
        conditions = [self._wins(True, a[k], a[j]) for j in range(k)]
        conditions += [self._wins(False, a[k], a[j]) for j in range(k + 1, len(a))]
        return sp.Piecewise((sp.Integer(1), sp.And(*conditions)), (sp.Integer(0), True))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return self._sympy(*self.args)._eval_evalf(prec)

    def _sympystr(self, printer) -> str:
        return f"{self._name}({', '.join(printer._print(a) for a in self.args)})"

    def _latex(self, printer) -> str:
        inner = ", ".join(printer._print(a) for a in self.args)
        return rf"\{self._name.lower()}\left({inner}\right)"

    def _numpycode(self, printer) -> str:
        # numpy.maximum/minimum propagate NaN, like the kernels' _max2/_min2.
        function = printer._module_format(f"numpy.{self._numpy}")
        text = printer._print(self.args[0])
        for a in self.args[1:]:
            text = f"{function}({text}, {printer._print(a)})"
        return text


class maximum(_Extremum):  # noqa: N801
    """``Max`` of the arguments in the order given; NaN if any argument is NaN. Derivative:
    1 for the first argument that attains the maximum, 0 for the others (at a tie, the
    first tied argument; the frontend puts constants first, so ``Max(0, t)`` has derivative
    0 at ``t = 0``, like ``relu``)."""

    _name = "Max"
    _numpy = "maximum"
    _sympy = sp.Max

    def _wins(self, strict: bool, a: sp.Expr, b: sp.Expr) -> sp.Basic:
        return a > b if strict else a >= b


class minimum(_Extremum):  # noqa: N801
    """``Min`` of the arguments in the order given; see ``maximum`` for NaN and ties."""

    _name = "Min"
    _numpy = "minimum"
    _sympy = sp.Min

    def _wins(self, strict: bool, a: sp.Expr, b: sp.Expr) -> sp.Basic:
        return a < b if strict else a <= b


SUPPORTED_FUNCTIONS: tuple[type, ...] = (
    sp.exp, sp.log, sp.tanh, sp.sin, sp.cos, sp.Abs, sp.sign, sp.Heaviside, sp.erf,
    sigmoid, softplus, relu, floor, maximum, minimum, sp.Piecewise,
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
        if isinstance(node, sp.Piecewise):
            check_piecewise(node)


NON_SMOOTH_FUNCTIONS: tuple[str, ...] = (
    "relu", "Heaviside", "Abs", "sign", "Max", "Min", "maximum", "minimum", "Piecewise",
    "floor", "ceiling", "DiracDelta",
)
"""Names of the functions with kinks or jumps: the one list ``symdl.check`` uses both to
keep test points away from kinks and to skip the complex step (which needs an analytic
continuation). Vocabulary built from these (``leaky_relu``, ``absolute``, ``huber``) is
written with them, so it is covered."""

_CONDITIONS = (sp.core.relational.Relational, sp.And, sp.Or, sp.Not)


def check_piecewise(node: sp.Piecewise) -> None:
    """Raises ``UnsupportedError`` unless ``node`` is a Piecewise symdl can compile: its last
    piece's condition is ``True`` (defined everywhere) and its conditions are comparisons
    joined by ``And``, ``Or`` and ``Not``."""
    if node.args[-1].cond != sp.true:
        raise UnsupportedError(
            f"Piecewise {node} is not defined everywhere: end it with an (expression, True) "
            "piece for the remaining inputs"
        )
    for _, cond in node.args:
        for sub in sp.preorder_traversal(cond):
            if isinstance(sub, sp.logic.boolalg.Boolean) and not isinstance(
                    sub, (*_CONDITIONS, sp.logic.boolalg.BooleanAtom, sp.Expr)):
                raise UnsupportedError(
                    f"the condition {cond} of a Piecewise uses {type(sub).__name__}: write "
                    "conditions as comparisons (<, <=, >, >=, Eq, Ne) joined by And, Or, Not"
                )
            if isinstance(sub, sp.core.relational.Relational) and not all(
                    isinstance(side, sp.Expr) for side in sub.args):
                raise UnsupportedError(f"the condition {cond} does not compare numbers")


def lower_kinks(body: sp.Basic, is_constant: Callable[[sp.Basic], bool]) -> sp.Basic:
    """``body`` with SymPy's ``Max``/``Min`` replaced by ``maximum``/``minimum`` whose
    arguments come constants first (``is_constant``), then in SymPy's order: at a tie the
    derivative goes to the first tied argument, so ``Max(0, t)`` has derivative 0 at 0."""

    def ordered(args):
        return sorted(args, key=lambda a: not is_constant(a))

    return body.replace(lambda e: isinstance(e, (sp.Max, sp.Min)),
                        lambda e: (maximum if isinstance(e, sp.Max) else minimum)(
                            *ordered(e.args)))


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
    # maximum/minimum print themselves as numpy.maximum/minimum (NaN propagates).
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
