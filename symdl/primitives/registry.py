"""The registry of scalar primitives: everything symdl knows about one scalar function, in
one entry.

``PRIMITIVES`` maps a function's class name to its ``Primitive``: the SymPy class (symdl's
own or SymPy's), its definition in elementary functions, its derivative, its NumPy and Numba
implementations, whether a complex step may differentiate it, its kink and the convention
there, its names in text and LaTeX, and the stable rewrites that produce it. Every stage
reads these entries: the frontend (``check_supported``), autodiff (``output_derivative``,
``stabilize``), the IR's rewrites (``STABILITY_REWRITES``, ``ACCURACY_REWRITES``), NumPy
evaluation (``numpy_function``), the kernel printer (``kernel_names``) and the checks
(``NON_SMOOTH_FUNCTIONS``, ``NOT_COMPLEX_STEPPABLE``).

Adding a primitive: its SymPy class (a two-line ``RegisteredFunction``, or SymPy's own), its
NumPy function (``numpy_impl``), its Numba helper if ``math`` has none (``numba_impl``), and
one entry below. ``tests/primitives/test_registry.py`` checks every entry against its
definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp

from symdl.errors import UnsupportedError
from symdl.primitives import functions as fn
from symdl.primitives import numpy_impl
from symdl.primitives.activations import elu, expm1, gelu, log1p, silu, softsign
from symdl.primitives.functions import maximum, minimum, relu, sigmoid, softplus

Rule = Callable[[sp.Expr], "sp.Expr | None"]


@dataclass(frozen=True)
class Primitive:
    """What symdl knows about one scalar function.

    Attributes:
        function: the SymPy class (``sigmoid``; SymPy's own for ``exp``, ``tanh``, ...).
        definition: the function of its SymPy arguments in elementary SymPy terms (the
            function itself for SymPy's own): what it means, for ``evalf`` and the tests.
        derivative: the derivative in the first argument, of the arguments; None for the
            variadic ``maximum``/``minimum``, whose class writes it (the first argument
            attaining the extremum gets it).
        numpy: the NumPy implementation (stable, NaN-propagating), same arguments.
        numba: what a kernel calls: a helper of ``numba_impl`` (``_sigmoid``) or a function
            of ``math`` (``math.log1p``).
        analytic: whether a complex step may differentiate it (an analytic continuation that
            the checks' NumPy reference can evaluate on complex numbers).
        kink: None for a smooth function; else where it is not smooth and the convention
            symdl takes there (matching PyTorch where PyTorch has the function).
        text: its name in plain text (as SymPy's ``str`` prints it).
        latex: its LaTeX, ``#`` standing for the arguments.
        output_derivative: the derivative written in the output ``y`` (``tanh' = 1 - y²``),
            so backprop reuses the stored activation; None where there is none.
        rewrites: scalar rewrites from overflow-prone forms to stable ones that produce this
            function (``exp(u)/(1 + exp(u))`` -> ``σ(u)``); each returns None where it does
            not apply.
        exact_rewrites: rewrites that remove cancellation at the cost of longer formulas
            (applied where numbers are computed, not where formulas are read).
        arity: the number of arguments; None for variadic.
    """

    function: type
    definition: Callable[..., sp.Expr]
    derivative: Callable[..., sp.Expr] | None
    numpy: Callable
    numba: str
    analytic: bool
    kink: str | None
    text: str
    latex: str
    output_derivative: Callable[[sp.Symbol], sp.Expr] | None = None
    rewrites: tuple[Rule, ...] = ()
    exact_rewrites: tuple[Rule, ...] = ()
    arity: int | None = 1


_SQRT_HALF = 1 / sp.sqrt(2)

_ENTRIES = [
    Primitive(sp.exp, sp.exp, sp.exp, np.exp, "_exp", True, None, "exp", r"e^{#}",
              output_derivative=lambda y: y),
    Primitive(sp.log, sp.log, lambda x: 1 / x, np.log, "math.log", True, None, "log",
              r"\log\left(#\right)"),
    Primitive(sp.tanh, sp.tanh, lambda x: 1 - sp.tanh(x)**2, np.tanh, "_tanh", True, None,
              "tanh", r"\tanh\left(#\right)", output_derivative=lambda y: 1 - y**2),
    Primitive(sp.sin, sp.sin, sp.cos, np.sin, "math.sin", True, None, "sin",
              r"\sin\left(#\right)"),
    Primitive(sp.cos, sp.cos, lambda x: -sp.sin(x), np.cos, "math.cos", True, None, "cos",
              r"\cos\left(#\right)"),
    Primitive(sp.Abs, sp.Abs, sp.sign, np.abs, "abs", False,
              "x = 0: derivative sign(0) = 0 (a subgradient), as PyTorch", "Abs",
              r"\left|#\right|"),
    Primitive(sp.sign, sp.sign, lambda x: sp.Integer(0), np.sign, "_sign", False,
              "jump at x = 0: sign(0) = 0; derivative 0 (the Dirac delta is dropped)",
              "sign", r"\operatorname{sign}\left(#\right)"),
    Primitive(sp.Heaviside, sp.Heaviside, lambda x, h0: sp.Integer(0), numpy_impl.heaviside,
              "_heaviside", False,
              "jump at x = 0: the value there is the second argument; derivative 0",
              "Heaviside", r"\theta\left(#\right)", arity=2),
    # erf is analytic, but NumPy has no complex erf for the checks' complex step.
    Primitive(sp.erf, sp.erf, lambda x: 2 * sp.exp(-x**2) / sp.sqrt(sp.pi), numpy_impl.erf,
              "math.erf", False, None, "erf", r"\operatorname{erf}\left(#\right)"),
    Primitive(sp.erfc, sp.erfc, lambda x: -2 * sp.exp(-x**2) / sp.sqrt(sp.pi), numpy_impl.erfc,
              "math.erfc", False, None, "erfc", r"\operatorname{erfc}\left(#\right)"),
    Primitive(sigmoid, lambda x: 1 / (1 + sp.exp(-x)),
              lambda x: sigmoid(x) * (1 - sigmoid(x)), numpy_impl.sigmoid, "_sigmoid", True,
              None, "sigmoid", r"\sigma\left(#\right)",
              output_derivative=lambda y: y * (1 - y),
              rewrites=(fn._sigmoid_quotients, fn._one_minus_sigmoid),
              exact_rewrites=(fn._one_minus_sigmoid, fn._sigmoid_minus_label)),
    Primitive(softplus, lambda x: sp.log(1 + sp.exp(x)), sigmoid, numpy_impl.softplus,
              "_softplus", True, None, "softplus", r"\operatorname{softplus}\left(#\right)",
              rewrites=(fn._log_of_one_plus_exp, fn._log_of_sigmoid,
                        fn._softplus_minus_linear),
              exact_rewrites=(fn._softplus_plus_linear,)),
    Primitive(relu, lambda x: sp.Max(x, 0), lambda x: sp.Heaviside(x, 0), numpy_impl.relu,
              "_relu", False, "x = 0: derivative 0 (Heaviside(x, 0)), as PyTorch", "relu",
              r"\operatorname{relu}\left(#\right)"),
    Primitive(fn.floor, sp.floor, lambda x: sp.Integer(0), np.floor, "math.floor", False,
              "jumps at the integers: derivative 0, its value wherever it exists", "floor",
              r"\left\lfloor # \right\rfloor"),
    Primitive(maximum, sp.Max, None, np.maximum, "_max2", False,
              "ties: the derivative goes to the first argument attaining the maximum "
              "(constants first: Max(0, x) has derivative 0 at x = 0, like relu)", "Max",
              r"\max\left(#\right)", arity=None),
    Primitive(minimum, sp.Min, None, np.minimum, "_min2", False,
              "ties: the derivative goes to the first argument attaining the minimum", "Min",
              r"\min\left(#\right)", arity=None),
    Primitive(silu, lambda x: x * sigmoid(x), lambda x: sigmoid(x) * (1 + x * sigmoid(-x)),
              numpy_impl.silu, "_silu", True, None, "silu", r"\operatorname{silu}\left(#\right)"),
    # The value is computed with erfc (numpy_impl, numba_impl: the tail x < -5 keeps its
    # relative accuracy); the derivative is written with erf, as PyTorch's, because SymPy
    # rewrites erfc(-u) as 2 - erfc(u): below -5 it is accurate in absolute terms only.
    Primitive(gelu, lambda x: x * (1 + sp.erf(x * _SQRT_HALF)) / 2,
              lambda x: (1 + sp.erf(x * _SQRT_HALF)) / 2
              + x * sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi),
              numpy_impl.gelu, "_gelu", False, None, "gelu",
              r"\operatorname{gelu}\left(#\right)"),
    Primitive(softsign, lambda x: x / (1 + sp.Abs(x)), lambda x: 1 / (1 + sp.Abs(x))**2,
              numpy_impl.softsign, "_softsign", False,
              "x = 0: the second derivative jumps from 2 to -2 and is taken as 0 (sign(0)), "
              "as PyTorch", "softsign", r"\operatorname{softsign}\left(#\right)"),
    # exp(min(0, x)): the branch not taken cannot overflow (NumPy evaluates both).
    Primitive(elu, lambda x, a: sp.Piecewise((x, x > 0), (a * expm1(sp.Min(x, 0)), True)),
              lambda x, a: sp.Piecewise((sp.Integer(1), x > 0),
                                        (a * sp.exp(minimum(sp.Integer(0), x)), True)),
              numpy_impl.elu, "_elu", False,
              "x = 0: elu'(0) = alpha (the branch x <= 0) and elu''(0) = 0 (min(0, x) gives "
              "its derivative to the 0 at the tie), as PyTorch", "elu",
              r"\operatorname{elu}\left(#\right)", arity=2),
    Primitive(log1p, lambda x: sp.log(1 + x), lambda x: 1 / (1 + x), np.log1p, "math.log1p",
              True, None, "log1p", r"\log\left(1 + #\right)"),
    Primitive(expm1, lambda x: sp.exp(x) - 1, sp.exp, np.expm1, "math.expm1", True, None,
              "expm1", r"\left(e^{#} - 1\right)"),  # not y + 1: it cancels for x << 0
]

PRIMITIVES: dict[str, Primitive] = {p.function.__name__: p for p in _ENTRIES}
"""Every scalar primitive by its SymPy class name."""

for _entry in _ENTRIES:
    if hasattr(_entry.function, "registry_entry"):  # symdl's own classes read their entry
        _entry.function.registry_entry = _entry
del _entry

SUPPORTED_FUNCTIONS: tuple[type, ...] = (*(p.function for p in _ENTRIES), sp.Piecewise)
"""Scalar functions a definition may contain; powers, sums and products are always allowed.
``Piecewise`` is structure, not a primitive: its conditions pick among expressions."""

NON_SMOOTH_FUNCTIONS: tuple[str, ...] = (
    *(p.function.__name__ for p in _ENTRIES if p.kink is not None),
    "Max", "Min", "Piecewise",
)
"""Names of the functions with kinks or jumps (the entries with a ``kink``, SymPy's ``Max``
and ``Min`` that ``lower_kinks`` turns into ``maximum``/``minimum``, and ``Piecewise``):
``symdl.check`` keeps test points away from them. Vocabulary built from these
(``leaky_relu``, ``absolute``, ``huber``) is written with them, so it is covered."""

NOT_COMPLEX_STEPPABLE: tuple[str, ...] = (
    *(p.function.__name__ for p in _ENTRIES if not p.analytic), "Max", "Min", "Piecewise",
)
"""Names of the functions a complex step must not differentiate (no analytic continuation
the checks can evaluate): every kink, and ``erf`` (NumPy has no complex erf)."""

STABILITY_REWRITES: tuple[Rule, ...] = tuple(r for p in _ENTRIES for r in p.rewrites)
"""Every entry's stable rewrites, in registry order: ``stabilize`` applies them bottom-up;
``symdl.ir.rewrites`` applies them to whole elementwise clusters of the IR."""

ACCURACY_REWRITES: tuple[Rule, ...] = tuple(
    dict.fromkeys(r for p in _ENTRIES for r in p.exact_rewrites))
"""Every entry's rewrites that trade a cheap cancelling form for an exact one (``σ(u)(1 -
σ(u))`` -> ``σ(u) σ(-u)``). They make printed formulas longer, so they are applied where
numbers are computed (``symdl.ir.rewrites.exact``: kernels and NumPy evaluation)."""


def output_derivative(function: type) -> Callable[[sp.Symbol], sp.Expr] | None:
    """``f'`` written in ``y = f(x)`` for the SymPy class ``function``, or None."""
    entry = PRIMITIVES.get(function.__name__)
    return entry.output_derivative if entry is not None and entry.function is function \
        else None


def kernel_names() -> dict[str, str]:
    """SymPy function name -> the Numba helper a kernel calls (``numba_impl``)."""
    return {name: p.numba for name, p in PRIMITIVES.items() if p.numba.startswith("_")}


def numpy_implementations() -> dict[str, Callable]:
    """SymPy function name -> NumPy implementation, for ``sympy.lambdify``'s ``modules``."""
    return {name: p.numpy for name, p in PRIMITIVES.items()}


def numpy_function(args: tuple[sp.Symbol, ...], body: sp.Expr) -> Callable:
    """Compiles a scalar SymPy body into a vectorised NumPy function of ``args``."""
    return sp.lambdify(args, body, modules=[numpy_implementations(), "numpy"])


def _rewrite_node(e: sp.Expr, rules: tuple[Rule, ...] = ()) -> sp.Expr:
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


def stabilize(expr: sp.Expr, rules: tuple[Rule, ...] = ()) -> sp.Expr:
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


def supported_names() -> str:
    return ", ".join(f.__name__ for f in SUPPORTED_FUNCTIONS)


def _applied_functions(expr: sp.Basic) -> set[sp.Function]:
    """The functions applied in ``expr``, not those in the shape of an array it reads (an
    output size ``floor((H - 1)/2) + 1`` is arithmetic on sizes, not a function of values)."""
    found: set[sp.Function] = set()
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, sp.IndexedBase):
            continue
        if isinstance(e, sp.Function):
            found.add(e)
        stack.extend(e.args)
    return found


def check_supported(expr: sp.Expr) -> None:
    """Raises ``UnsupportedError`` naming the first scalar function symdl cannot handle."""
    for f in _applied_functions(expr):
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
            fn.check_piecewise(node)
