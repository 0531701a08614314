"""Scalar expressions as Numba source: the printer for one entry of a loop body, the
helper functions it calls (stable ``exp``, ``tanh``, ``sigmoid``, ...) and the argument checks
every kernel module carries."""

from __future__ import annotations

import inspect
import math
import re
import types
from collections.abc import Callable

import numba
import numpy as np
import sympy as sp
from sympy.printing.pycode import PythonCodePrinter, _known_constants_math

from symdl.errors import UnsupportedError
from symdl.primitives import numba_impl
from symdl.primitives.registry import kernel_names

FASTMATH = '{"reassoc", "contract"}'
"""The only fast-math licences of generated loops: sums may be reassociated (so reductions
vectorise; a sum in another order, as in any BLAS) and a*b + c may become one fused
multiply-add. No others: NaN and inf keep their meaning, no approximate division."""

def _source(function: Callable) -> str:
    """The text of a helper as a kernel module carries it: ``@numba.njit(...)``, then ``def``."""
    text = inspect.getsource(function)
    return text.replace("@njit_options(", "@numba.njit(", 1)


HELPERS = "\n" + "\n\n".join(_source(f) for f in numba_impl.ALWAYS)
"""The Numba helpers every kernel carries (``symdl.primitives.numba_impl.ALWAYS``), as source."""


def helper_source(functions: list[str]) -> str:
    """``HELPERS`` and the on-demand helpers (``numba_impl.ON_DEMAND``) that ``functions`` (the
    source of a module's loop functions) call."""
    extra = [f for f in numba_impl.ON_DEMAND
             if any(re.search(rf"\b{f.__name__}\(", text) for text in functions)]
    return HELPERS + "".join("\n\n" + _source(f) for f in extra)


def jitted_helpers(**options: object) -> dict[str, Callable]:
    """Every helper of ``numba_impl`` jitted as a kernel module jits it (``options`` override,
    e.g. ``cache=False``), in one namespace so that helpers calling helpers resolve to the
    jitted ones. For tests and for calling the helpers from Python."""
    namespace: dict[str, object] = {"math": math, "np": np}
    for f in (*numba_impl.ALWAYS, *numba_impl.ON_DEMAND):
        copy = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__)
        copy.__doc__ = f.__doc__
        namespace[f.__name__] = numba.njit(**{**f.njit_options, **options})(copy)
    return {f.__name__: namespace[f.__name__]
            for f in (*numba_impl.ALWAYS, *numba_impl.ON_DEMAND)}


CHECK = '''
def _check(array, shape, dtype, name):
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    if array.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {array.dtype}")
'''


MAX_UNROLLED_POWER = 4
"""Integer powers up to this exponent (and their reciprocals) are written as products."""


class ScalarPrinter(PythonCodePrinter):
    """Prints scalar SymPy expressions as Numba-compatible Python; strict about symbols."""

    # The Numba helpers of the registry's primitives (``_exp``, ``_sigmoid``, ...).
    _kf = {**PythonCodePrinter._kf, **kernel_names()}

    def __init__(self, names: dict[sp.Symbol, str], integers: bool = False,
                 literal: str | None = None):
        super().__init__({"fully_qualified_modules": True, "strict": True})
        self.names = names
        self.integers = integers
        self.literal = literal
        """A name to call on every float constant (``LITERAL``: the loop's element type), or
        None: a float literal is a float64 in Numba and would turn float32 arithmetic into
        float64 (half the SIMD lanes, and a conversion per store)."""

    def _typed(self, text: str) -> str:
        return text if self.literal is None else f"{self.literal}({text})"

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        # Every symbol must have been given a safe identifier; a user's name is never printed.
        if expr not in self.names:
            raise UnsupportedError(f"symbol {expr} has no value in the kernel")
        return self.names[expr]

    _print_Dummy = _print_Symbol  # noqa: N815 - SymPy's printer method naming

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        at_zero = expr.args[1] if len(expr.args) > 1 else sp.Rational(1, 2)
        # at_zero may be a map variable (a value computed elsewhere), not only a number.
        return f"_heaviside({self._print(expr.args[0])}, {self._print(at_zero)})"

    def _print_maximum(self, expr: sp.Expr) -> str:
        return self._fold("_max2", expr.args)

    def _print_minimum(self, expr: sp.Expr) -> str:
        return self._fold("_min2", expr.args)

    def _fold(self, helper: str, args: tuple) -> str:
        text = self._print(args[0])
        for a in args[1:]:
            text = f"{helper}({text}, {self._print(a)})"
        return text

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        # Nested conditional expressions over values that are all computed anyway: LLVM
        # makes them selects, so a loop over a Piecewise still vectorises.
        *pieces, (last, _) = expr.args
        text = self._print(last)
        for value, cond in reversed(pieces):
            text = f"({self._print(value)} if {self._print(cond)} else {text})"
        return text

    def _print_And(self, expr: sp.And) -> str:
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr: sp.Or) -> str:
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr: sp.Not) -> str:
        return f"(not {self._print(expr.args[0])})"

    def _print_sign(self, expr: sp.sign) -> str:
        # SymPy's own printing, copysign(1, x), makes sign(NaN) = ±1: NaN must propagate.
        return f"_sign({self._print(expr.args[0])})"

    def _print_Float(self, expr: sp.Float) -> str:
        # SymPy prints a Float with 15 digits (1/3 -> 0.333333333333333, 4e-16 off); repr of
        # the nearest double round-trips exactly (step_decay's floor(3 * (1/3)) needs it).
        value = float(expr)
        if value != value or abs(value) == float("inf"):
            raise UnsupportedError(f"the constant {expr} is not finite")
        return self._typed(repr(value))

    def _print_Rational(self, expr: sp.Rational) -> str:
        if self.literal is not None:  # rounded once, in the loop's element type
            return self._typed(repr(float(expr)))
        return f"({float(expr.p)}/{float(expr.q)})"

    def _print_Integer(self, expr: sp.Integer) -> str:
        return str(int(expr)) if self.integers else self._typed(f"{float(expr)}")

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        if expr.exp == 2:
            base = self.parenthesize(expr.base, 100)
            return f"({base}*{base})"
        if (not self.integers and expr.exp.is_Integer
                and 2 <= abs(int(expr.exp)) <= MAX_UNROLLED_POWER):
            # x**3 is a call of pow (a libm call: the loop stays scalar; GELU's tanh form over
            # 2^20 float32 entries took 17 ms, 10 ms with its cube as products).
            base = self.parenthesize(expr.base, 100)
            product = "(" + "*".join([base] * abs(int(expr.exp))) + ")"
            return product if expr.exp > 0 else f"({self._print(sp.S.One)}/{product})"
        return super()._print_Pow(expr, rational)


def _typed_constant(printer: Callable[[PythonCodePrinter, sp.Expr], str]):
    def print_typed(self: ScalarPrinter, expr: sp.Expr) -> str:
        return self._typed(printer(self, expr))  # math.pi is a float64 like any literal
    return print_typed


for _name in _known_constants_math:
    setattr(ScalarPrinter, f"_print_{_name}",
            _typed_constant(getattr(PythonCodePrinter, f"_print_{_name}")))

LITERAL = "_F"
"""The local every loop function binds to its element type (``a.dtype.type``), through which
``ScalarPrinter(..., literal=LITERAL)`` writes constants."""
