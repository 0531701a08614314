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
* ``STABILITY_REWRITES``: rewrites from overflow-prone forms to stable ones
  (``exp(x)/(exp(x) + 1)`` -> ``sigmoid(x)``), applied to every scalar derivative and, by
  ``symdl.ir.rewrites``, to the IR of every definition and derivative.
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

    def _eval_is_positive(self) -> bool | None:
        # Positive for every real argument: log of a product with it may be split.
        return True if self.args[0].is_extended_real else None

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs) -> sp.Expr:
        return 1 / (1 + sp.exp(-x))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec)

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\sigma\left({printer._print(self.args[0])}\right)", exp)

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.primitives.sympy_results import numpy_call

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

    def _eval_is_positive(self) -> bool | None:
        # Positive for every real argument: log of a product with it may be split.
        return True if self.args[0].is_extended_real else None

    def _eval_rewrite_as_log(self, x: sp.Expr, **kwargs) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec)

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\operatorname{{softplus}}\left({printer._print(self.args[0])}\right)",
                      exp)

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.primitives.sympy_results import numpy_call

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

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\operatorname{{relu}}\left({printer._print(self.args[0])}\right)", exp)

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.primitives.sympy_results import numpy_call

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

    def _latex(self, printer, exp: str | None = None) -> str:
        return _power(rf"\left\lfloor {printer._print(self.args[0])} \right\rfloor", exp)


class _Extremum(sp.Function):
    """Shared part of ``maximum`` and ``minimum``: SymPy's ``Max``/``Min`` with the arguments
    kept in the order given (SymPy sorts them), so "the first argument wins a tie" means
    something. ``symdl.define.translate`` turns every ``Max``/``Min`` of a definition into these."""

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

    def _latex(self, printer, exp: str | None = None) -> str:
        inner = ", ".join(printer._print(a) for a in self.args)
        return _power(rf"\{self._name.lower()}\left({inner}\right)", exp)

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


def _reciprocal_of_one_plus_exp(e: sp.Expr) -> tuple[sp.Expr, int] | None:
    """``(u, k)`` when ``e`` is ``(1 + exp(u))**-k`` for a positive integer ``k``."""
    if not (isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp < 0):
        return None
    terms = sp.Add.make_args(e.base)
    if len(terms) != 2 or sp.Integer(1) not in terms:
        return None
    (other,) = [t for t in terms if t != 1]
    if not isinstance(other, sp.exp):
        return None
    return other.args[0], int(-e.exp)


def _sigmoid_quotients(e: sp.Expr) -> sp.Expr | None:
    """``exp(u)/(1 + exp(u))`` -> ``σ(u)``; ``1/(1 + exp(u))`` -> ``σ(-u)``, within any
    product (``y exp(u)/(1 + exp(u))**2`` -> ``y σ(u) σ(-u)``)."""
    if not isinstance(e, (sp.Mul, sp.Pow)):
        return None
    factors = list(sp.Mul.make_args(e))
    changed = False
    for k, f in enumerate(factors):
        found = _reciprocal_of_one_plus_exp(f)
        if found is None:
            continue
        u, power = found
        replacement = []
        for _ in range(power):
            partner = next((j for j, g in enumerate(factors) if isinstance(g, sp.exp)
                            and (g.args[0] / u).is_Integer and g.args[0] / u >= 1), None)
            if partner is None:
                replacement.append(sigmoid(-u))
                continue
            m = factors[partner].args[0] / u
            factors[partner] = sp.exp((m - 1) * u)
            replacement.append(sigmoid(u))
        factors[k] = sp.Mul(*replacement)
        changed = True
    return sp.Mul(*factors) if changed else None


def _log_of_one_plus_exp(e: sp.Expr) -> sp.Expr | None:
    """``log(exp(a) + exp(b))`` -> ``a + softplus(b - a)`` (``1`` is ``exp(0)``): no
    overflow, and ``log(1 + exp(u))`` is ``softplus(u)``."""
    if not isinstance(e, sp.log):
        return None
    terms = sp.Add.make_args(e.args[0])
    if len(terms) != 2:
        return None
    exponents = []
    for t in terms:
        if t == 1:
            exponents.append(sp.Integer(0))
        elif isinstance(t, sp.exp):
            exponents.append(t.args[0])
        else:
            return None
    a, b = sorted(exponents, key=lambda x: (x != 0, sp.default_sort_key(x)))
    return a + softplus(b - a)


def _log_of_sigmoid(e: sp.Expr) -> sp.Expr | None:
    """``log σ(u)`` -> ``-softplus(-u)``; ``log(1 - σ(u))`` -> ``-softplus(u)``."""
    if not isinstance(e, sp.log):
        return None
    arg = e.args[0]
    if isinstance(arg, sigmoid):
        return -softplus(-arg.args[0])
    terms = sp.Add.make_args(arg)
    if len(terms) == 2 and sp.Integer(1) in terms:
        (other,) = [t for t in terms if t != 1]
        if isinstance(-other, sigmoid):
            return -softplus((-other).args[0])
    return None


def _one_minus_sigmoid(e: sp.Expr) -> sp.Expr | None:
    """``1 - σ(u)`` -> ``σ(-u)``: no cancellation where ``σ(u)`` is near 1."""
    if not isinstance(e, sp.Add):
        return None
    terms = list(e.args)
    if sp.Integer(1) not in terms:
        return None
    for t in terms:
        if isinstance(-t, sigmoid):
            rest = [r for r in terms if r is not t]
            rest.remove(sp.Integer(1))
            return sp.Add(sigmoid(-(-t).args[0]), *rest)
    return None


def _softplus_minus_linear(e: sp.Expr) -> sp.Expr | None:
    """``softplus(u) - u`` -> ``softplus(-u)`` (and ``u - softplus(u)`` -> ``-softplus(-u)``):
    the difference of two large numbers becomes one small one."""
    if not isinstance(e, sp.Add):
        return None
    for t in e.args:
        c, rest = t.as_coeff_Mul()
        if not isinstance(rest, softplus):
            continue
        u = rest.args[0]
        others = e - t
        remainder = others + c * u
        if _term_count(remainder) < _term_count(others):
            return c * softplus(-u) + remainder
    return None


def _term_count(e: sp.Expr) -> int:
    return 0 if e == 0 else len(sp.Add.make_args(e))


STABILITY_REWRITES: tuple[Callable[[sp.Expr], sp.Expr | None], ...] = (
    _sigmoid_quotients,
    _log_of_one_plus_exp,
    _log_of_sigmoid,
    _one_minus_sigmoid,
    _softplus_minus_linear,
)
"""Scalar rewrites from overflow-prone forms to stable ones: each takes a subexpression and
returns an equal stable one, or None where it does not apply. ``stabilize`` applies them
bottom-up; ``symdl.ir.rewrites`` applies them to whole elementwise clusters of the IR."""


def _scaled(term: sp.Expr, f: type[sp.Function]) -> tuple[sp.Expr, sp.Symbol] | None:
    """``(c, u)`` when ``term`` is ``c f(u)`` for a symbol ``u`` and ``c`` free of it."""
    calls = [a for a in sp.Mul.make_args(term) if isinstance(a, f)]
    if len(calls) != 1 or not isinstance(calls[0].args[0], sp.Symbol):
        return None
    u = calls[0].args[0]
    c = term / calls[0]
    return None if c.has(u) else (c, u)


def _softplus_plus_linear(e: sp.Expr) -> sp.Expr | None:
    """``softplus(u) + a u`` -> ``(1 + a) softplus(u) - a softplus(-u)`` (``softplus(u) - u =
    softplus(-u)``): the logistic loss ``softplus(z) - y z`` becomes ``(1 - y) softplus(z) +
    y softplus(-z)``, a sum of two non-negative terms, exact for ``y`` in {0, 1} where the
    difference of two large numbers loses every digit (z = 40, y = 1: 4.2e-18, not 0)."""
    if not isinstance(e, sp.Add):
        return None
    for t in e.args:
        found = _scaled(t, softplus)
        if found is None:
            continue
        c, u = found
        others = e - t
        a = sp.diff(others, u)
        if a == 0 or a.has(u):
            continue
        return (c + a) * softplus(u) - a * softplus(-u) + sp.expand(others - a * u)
    return None


def _sigmoid_minus_label(e: sp.Expr) -> sp.Expr | None:
    """``σ(u) - y`` -> ``(1 - y) σ(u) - y σ(-u)`` (``σ(u) + σ(-u) = 1``) for a label ``y`` (a
    symbol or a number in [0, 1]): exact for ``y`` in {0, 1}, where ``σ(u) - 1`` cancels."""
    if not isinstance(e, sp.Add) or len(e.args) != 2:
        return None
    for t in e.args:
        found = _scaled(t, sigmoid)
        if found is None:
            continue
        c, u = found
        r = (e - t) / c
        label = -r
        if not (isinstance(label, sp.Symbol) or label.is_Number and 0 < label <= 1):
            continue
        if label.has(u):
            continue
        return c * ((1 - label) * sigmoid(u) - label * sigmoid(-u))
    return None


ACCURACY_REWRITES: tuple[Callable[[sp.Expr], sp.Expr | None], ...] = (
    _one_minus_sigmoid,
    _softplus_plus_linear,
    _sigmoid_minus_label,
)
"""Rewrites that trade a cheap cancelling form for an exact one (``σ(u)(1 - σ(u))`` ->
``σ(u) σ(-u)``). They make printed formulas longer, so they are applied where numbers are
computed (``symdl.ir.rewrites.exact``: kernels and NumPy evaluation), not where they are read."""


def _rewrite_node(e: sp.Expr,
                  rules: tuple[Callable[[sp.Expr], sp.Expr | None], ...] = ()) -> sp.Expr:
    rules = rules or STABILITY_REWRITES
    for _ in range(8):  # a rewrite may enable another on the same node; each one simplifies
        for rule in rules:
            new = rule(e)
            if new is not None and new != e:
                e = new
                break
        else:
            return e
    return e


def stabilize(expr: sp.Expr,
              rules: tuple[Callable[[sp.Expr], sp.Expr | None], ...] = ()) -> sp.Expr:
    """Rewrites overflow-prone scalar forms to stable ones (``rules``, by default
    ``STABILITY_REWRITES``).

    Outer forms first: ``exp(u)/(1 + exp(u))`` must be seen whole before its denominator
    alone becomes ``σ(-u)`` (``exp(u) σ(-u)`` overflows to ``inf · 0``)."""
    expr = _rewrite_node(expr, rules)
    if not expr.args or isinstance(expr, (sp.Lambda, sp.Dummy)):
        return expr
    args = tuple(stabilize(a, rules) for a in expr.args)
    if args != expr.args:
        expr = _rewrite_node(expr.func(*args), rules)
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
