"""Refuses, when a definition is derived, what the kernel printer could not compile.

The translator accepts any SymPy scalar body inside an elementwise map and any constant
coefficient; the printer meets them only when a kernel is generated. A body the printer has
no method for (``Integral``, ``exp_polar``, an unevaluated ``Derivative``) or a constant that
is not a finite real number (``I``, ``zoo``, ``oo``, ``nan``, ``(-1)**(1/3)``, ``10**400``)
would fail there, in Numba's type inference or at the first call, with an error that names
neither the construct nor the fix. ``check_compilable`` prints every body and coefficient of
an IR graph once, with the printer the kernels use, and raises ``UnsupportedError`` naming
the first construct that fails.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import sympy as sp

from symdl import ir
from symdl.errors import SymdlError, UnsupportedError
from symdl.ir.rules import Rules
from symdl.kernels.scalar_code import ScalarPrinter

_NOT_FINITE = (sp.S.Infinity, sp.S.NegativeInfinity, sp.S.ComplexInfinity, sp.S.NaN)


def check_compilable(roots: list[ir.Node]) -> None:
    """Raises ``UnsupportedError`` for the first map body or constant under ``roots`` that a
    kernel could not compute in real floating point."""
    for node in ir.topological_order(roots):
        CHECK(node)


CHECK: Rules[Callable[[ir.Node], None]] = Rules("the compilability check")
"""node kind -> (node) -> None, or ``UnsupportedError`` for a scalar a kernel cannot compute."""


@CHECK.register(ir.Map)
def _check_map(node: ir.Map) -> None:
    _check_body(node.fn)


@CHECK.register(ir.Einsum)
def _check_einsum(node: ir.Einsum) -> None:
    if node.coeff != 1:
        _check_constant(sp.sympify(node.coeff))


@CHECK.register(ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Add, ir.LogSumExp, ir.Softmax,
                ir.Solve, ir.Det, ir.Named)
def _check_nothing(node: ir.Node) -> None:
    pass  # no scalar body or constant of its own


@functools.lru_cache(maxsize=4096)
def _check_body(fn: sp.Lambda) -> None:
    # Printing first: an unprintable constant (zeta(3), an Integral) is named as such and
    # never evaluated numerically.
    _check_prints(fn.expr)
    _check_constants_in(fn.expr, set(fn.variables))


@functools.lru_cache(maxsize=4096)
def _check_constant(value: sp.Expr) -> None:
    if _is_plain_number(value):
        return  # most coefficients: 1/n of a mean, 2 of a square
    _check_prints(value)
    _check_constants_in(value, set())


def _is_plain_number(e: sp.Basic) -> bool:
    """A rational or float the printer writes as a finite double (``p/q`` in doubles)."""
    if e.is_Rational:
        return abs(e.p) < 2**1000 and e.q < 2**1000
    return bool(e.is_Float) and math.isfinite(float(e))


def _check_constants_in(expr: sp.Basic, variables: set[sp.Basic]) -> None:
    """Checks each largest subexpression of ``expr`` free of ``variables`` (what the kernel
    computes as a constant); dimension symbols are positive integers."""
    stack = [expr]
    while stack:
        e = stack.pop()
        if not (e.free_symbols & variables):
            _check_real_finite(e)
        else:
            stack.extend(e.args)


def _check_real_finite(e: sp.Basic) -> None:
    if not isinstance(e, sp.Expr):
        return  # a Piecewise condition or a Tuple of limits: not a value
    if e.has(*_NOT_FINITE):
        raise UnsupportedError(
            f"the constant {_short(e)} is not finite: symdl computes with finite real "
            "numbers; remove oo/zoo/nan from the definition (use a large finite number, or a "
            "mask)")
    if e.has(sp.I) or e.is_extended_real is False:
        raise UnsupportedError(
            f"the constant {_short(e)} is not a real number: symdl computes with real numbers "
            "only (complex constants such as I, sqrt(-2) or log(-1) are not supported)")
    if e.free_symbols or not e.is_number:
        return  # depends on dimension sizes: real for every size, as far as SymPy can tell
    try:
        value = complex(e.evalf(20))
    except (TypeError, ValueError):
        return  # not a number SymPy can evaluate: the printer decides
    if value.imag != 0:
        raise UnsupportedError(
            f"the constant {_short(e)} = {value} is not a real number: symdl computes with "
            "real numbers only")
    if not math.isfinite(value.real):
        raise UnsupportedError(
            f"the constant {_short(e)} is beyond the range of float64 (about 1.8e308): "
            "rescale the definition so that its constants are representable")


def _check_prints(expr: sp.Expr) -> None:
    names = {s: f"x{k}" for k, s in enumerate(sorted(expr.free_symbols, key=str))}
    try:
        ScalarPrinter(names).doprint(expr)
    except SymdlError:
        raise
    except Exception as exc:  # noqa: BLE001 - any printer failure means "cannot compile"
        culprit = _smallest_unprintable(expr, names, exc)
        raise UnsupportedError(
            f"{type(culprit).__name__} ({_short(culprit)}) cannot be compiled into a kernel "
            f"({exc}); write the definition with the supported functions "
            "(symdl.primitives.registry.supported_names()), evaluate integrals and derivatives "
            "first (.doit()), and use real numbers only") from exc


def _smallest_unprintable(expr: sp.Basic, names: dict, error: Exception) -> sp.Basic:
    """The construct to name: the outermost one the printer's message names (SymPy's
    "Unsupported by ...: Integral"), else the first subexpression, children before parents,
    that does not print (a symbol alone is never blamed: a bound variable does not print
    outside its integral)."""
    order: list[sp.Basic] = []
    stack = [expr]
    while stack:
        e = stack.pop()
        order.append(e)
        stack.extend(reversed(e.args))
    for e in order:
        if not e.is_Atom and type(e).__name__ in str(error):
            return e
    for e in reversed(order):
        if e.is_Atom or not isinstance(e, sp.Expr):
            continue
        try:
            ScalarPrinter(names).doprint(e)
        except Exception:  # noqa: BLE001 - looking for the failing node
            return e
    return expr


def _short(e: sp.Basic) -> str:
    text = str(e)
    return text if len(text) <= 80 else text[:77] + "..."


@CHECK.register(ir.MatrixFunction)
def _check_matrix_function(node: ir.Node) -> None:
    pass  # a factorisation step: no scalar body or constant of its own



# Computed positions (symdl.ir.indexed): integer positions, no scalar body of their own.
CHECK.register(ir.AffineRead, ir.AffineScatter, ir.Take, ir.TakeAdjoint, ir.Max,
               ir.ArgMaxMask)(_check_nothing)



@CHECK.register(ir.Scan)
def _check_scan(node: ir.Scan) -> None:
    check_compilable(node.body_roots())  # the step is code of its own
