"""Scalar expressions as Numba source: the printer for one entry of a loop body, the
helper functions it calls (stable ``exp``, ``tanh``, ``sigmoid``, ...) and the argument checks
every kernel module carries."""

from __future__ import annotations

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from symdl.errors import UnsupportedError

FASTMATH = '{"reassoc", "contract"}'
"""The only fast-math licences of generated loops: sums may be reassociated (so reductions
vectorise; a sum in another order, as in any BLAS) and a*b + c may become one fused
multiply-add. No others: NaN and inf keep their meaning, no approximate division."""

HELPERS = '''
@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp(x):
    """exp(x) within 3 ulp, without a libm call, so that loops calling it vectorise:
    exp(x) = 2^k exp(r) with |r| <= ln(2)/2, exp(r) by its Taylor polynomial to degree 12
    (Estrin's scheme), 2^k from the exponent bits in two halves (subnormal results)."""
    # float(): interpreted (jit=False) float32 input stays float32 under NumPy's rules, which
    # breaks the rounding constant below; Numba already computes this line in float64.
    xc = float(min(max(x, -745.2), 709.8))
    t = xc * 1.4426950408889634 + 6755399441055744.0  # round(x / ln 2) in the low bits
    k = t - 6755399441055744.0
    r = (xc - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
    r2 = r * r
    r4 = r2 * r2
    b0 = (1.0 + r) + r2 * (0.5 + r * (1.0 / 6))
    b1 = (1.0 / 24 + r * (1.0 / 120)) + r2 * (1.0 / 720 + r * (1.0 / 5040))
    b2 = (1.0 / 40320 + r * (1.0 / 362880)) + r2 * (1.0 / 3628800 + r * (1.0 / 39916800))
    p = (b0 + r4 * b1) + (r4 * r4) * (b2 + r4 * (1.0 / 479001600))
    ki = np.float64(t).view(np.int64) - np.int64(0x4338000000000000)
    half = ki >> 1
    y = p * np.int64((half + 1023) << 52).view(np.float64) * np.int64(
        (ki - half + 1023) << 52).view(np.float64)
    y = y if x < 709.8 else math.inf
    return y if x == x else x


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _tanh(x):
    """tanh(x) = e / (e + 2) with e = expm1(2|x|), the sign restored; expm1 of a small
    argument by its Taylor polynomial (no cancellation), of a larger one as exp - 1.
    Branch-free, so that loops calling it vectorise; within 10 ulp of math.tanh. Inlined by
    Numba (inline="always"): LLVM finds it too large to inline, and a loop that calls a
    function does not vectorise (65,536 entries: 0.46 ms called, 0.12 ms inlined)."""
    a = min(abs(x), 20.0)  # tanh(20) rounds to 1
    u = 2.0 * a
    u2 = u * u
    u4 = u2 * u2
    b0 = u + u2 * (0.5 + u * (1.0 / 6))
    b1 = (1.0 / 24 + u * (1.0 / 120)) + u2 * (1.0 / 720 + u * (1.0 / 5040))
    b2 = (1.0 / 40320 + u * (1.0 / 362880)) + u2 * (1.0 / 3628800 + u * (1.0 / 39916800))
    small = (b0 + u4 * b1) + (u4 * u4) * (b2 + u4 * (1.0 / 479001600))
    e = small if u < 0.34657359027997264 else _exp(u) - 1.0
    y = math.copysign(e / (e + 2.0), x)
    return y if x == x else x


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _log1p_unit(u):
    """log1p(u) for 0 <= u <= 1 (softplus reads it at exp(-|x|)) within 2 ulp, branch-free
    so that loops calling it vectorise: log1p(t) = 2 atanh(s), s = t / (2 + t), by its odd
    series in s to s^25, with t = u below 1/2 and t = (u - 1)/2 (exact) plus ln 2 above."""
    high = u >= 0.5
    t = (u - 1.0) * 0.5 if high else u
    s = t / (2.0 + t)
    z = s * s
    z2 = z * z
    z4 = z2 * z2
    c0 = (1.0 / 3 + z * (1.0 / 5)) + z2 * (1.0 / 7 + z * (1.0 / 9))
    c1 = (1.0 / 11 + z * (1.0 / 13)) + z2 * (1.0 / 15 + z * (1.0 / 17))
    c2 = (1.0 / 19 + z * (1.0 / 21)) + z2 * (1.0 / 23 + z * (1.0 / 25))
    series = (c0 + z4 * c1) + (z4 * z4) * c2
    y = 2.0 * s + (2.0 * s) * (z * series)
    return y + (0.6931471805599453 if high else 0.0)


@numba.njit(cache=True, inline="always")
def _sigmoid(x):
    """1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) below: no overflow, one division,
    the branch a select (vectorisable)."""
    e = _exp(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@numba.njit(cache=True, inline="always")
def _softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, vectorisable."""
    return max(x, 0.0) + _log1p_unit(_exp(-abs(x)))


@numba.njit(cache=True, inline="always")
def _relu(x):
    """max(x, 0) with NaN propagated (as NumPy's maximum): NaN <= 0 is false. A select."""
    return 0.0 if x <= 0.0 else x


@numba.njit(cache=True, inline="always")
def _max2(a, b):
    """max(a, b) as one select (vectorisable): NaN if either is NaN, like np.maximum."""
    return b if (a < b) | (b != b) else a


@numba.njit(cache=True, inline="always")
def _min2(a, b):
    """min(a, b) as one select (vectorisable): NaN if either is NaN, like np.minimum."""
    return b if (a > b) | (b != b) else a


@numba.njit(cache=True, inline="always")
def _heaviside(x, at_zero):
    """1 above 0, 0 below, at_zero at 0, NaN at NaN (as NumPy's heaviside); selects only."""
    y = 1.0 if x > 0.0 else at_zero
    y = 0.0 if x < 0.0 else y
    return y if x == x else x


@numba.njit(cache=True, inline="always")
def _sign(x):
    """-1, 0 or 1, NaN at NaN (as NumPy's sign); selects only."""
    y = 1.0 if x > 0.0 else 0.0
    y = -1.0 if x < 0.0 else y
    return y if x == x else x
'''


CHECK = '''
def _check(array, shape, dtype, name):
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    if array.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {array.dtype}")
'''


class ScalarPrinter(PythonCodePrinter):
    """Prints scalar SymPy expressions as Numba-compatible Python; strict about symbols."""

    _kf = {**PythonCodePrinter._kf, "exp": "_exp", "tanh": "_tanh", "sigmoid": "_sigmoid",
           "softplus": "_softplus", "relu": "_relu", "sign": "_sign"}

    def __init__(self, names: dict[sp.Symbol, str], integers: bool = False):
        super().__init__({"fully_qualified_modules": True, "strict": True})
        self.names = names
        self.integers = integers

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
        return repr(value)

    def _print_Rational(self, expr: sp.Rational) -> str:
        return f"({float(expr.p)}/{float(expr.q)})"

    def _print_Integer(self, expr: sp.Integer) -> str:
        return str(int(expr)) if self.integers else f"{float(expr)}"

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        if expr.exp == 2:
            base = self.parenthesize(expr.base, 100)
            return f"({base}*{base})"
        return super()._print_Pow(expr, rational)
