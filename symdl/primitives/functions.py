"""Scalar functions: the deep-learning primitives SymPy lacks, as SymPy ``Function`` classes,
and the stable rewrites that produce them.

Elementwise layers are scalar functions applied entry by entry. SymPy already has ``exp``,
``log`` and ``tanh``; this module adds ``sigmoid``, ``softplus``, ``relu``, ``floor``,
``maximum`` and ``minimum``, so they differentiate, print and substitute like any SymPy
function. What symdl knows about each (derivative, NumPy and Numba implementations, kinks,
names, rewrites) is its entry in ``symdl.primitives.registry.PRIMITIVES``; a
``RegisteredFunction`` reads its derivative, value and LaTeX name from there.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from symdl.errors import UnsupportedError


def _power(latex: str, exp: str | None) -> str:
    """SymPy's LaTeX printer passes the exponent of ``f(x)**p`` to ``f._latex`` as ``exp``."""
    return latex if exp is None else rf"{latex}^{{{exp}}}"


class RegisteredFunction(sp.Function):
    """A symdl scalar function whose derivative, numeric value and LaTeX come from its entry
    in ``symdl.primitives.registry.PRIMITIVES``: the entry is the one place that says what
    the function is. The registry attaches the entry to the class (``registry_entry``) when it is
    built (it imports this module, so this module cannot import it)."""

    registry_entry = None  # the registry's Primitive, set by symdl.primitives.registry

    @classmethod
    def entry(cls):  # -> registry.Primitive
        if cls.registry_entry is None:
            raise UnsupportedError(f"{cls.__name__} has no entry in the primitive registry")
        return cls.registry_entry

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        if argindex != 1:
            raise sp.ArgumentIndexError(self, argindex)
        return self.entry().derivative(*self.args)

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return self.entry().definition(*self.args)._eval_evalf(prec)

    def _latex(self, printer, exp: str | None = None) -> str:
        inner = ", ".join(printer._print(a) for a in self.args)
        return _power(self.entry().latex.replace("#", inner), exp)

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        name = type(self).__name__
        if name in printer._settings.get("user_functions", {}):
            # lambdify(..., modules=[{name: ...}, ...]) chose its own implementation.
            return f"{name}({', '.join(printer._print(a) for a in self.args)})"
        return printer._print(self.entry().definition(*self.args))


class sigmoid(RegisteredFunction):  # noqa: N801 - SymPy function classes are lower case
    """The logistic function ``1 / (1 + exp(-x))``."""

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

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.primitives.sympy_results import numpy_call

        return numpy_call(printer, "sigmoid", self.args[0])


class softplus(RegisteredFunction):  # noqa: N801
    """``log(1 + exp(x))``, evaluated without overflow."""

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

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.primitives.sympy_results import numpy_call

        return numpy_call(printer, "softplus", self.args[0])


class relu(RegisteredFunction):  # noqa: N801
    """``max(x, 0)``. Its derivative at 0 is taken as 0 (``Heaviside(x, 0)``)."""

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number and x.is_extended_real:
            return sp.Max(x, 0)
        return None

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
