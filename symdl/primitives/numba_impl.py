"""The Numba implementations of the scalar primitives: plain Python functions that every
generated kernel module carries as source (``symdl.kernels.scalar_code.helper_source``), so an
exported kernel needs only NumPy and Numba.

Each function is written once, here: the kernel module gets its source text (with the
decorator below spelled ``@numba.njit(...)``), interpreted kernels (``jit=False``) run that
same text as Python, and tests import the functions and jit them
(``symdl.kernels.scalar_code.jitted_helpers``). They must stay valid Numba ``nopython`` code:
``math``, ``np`` and the helpers above them are the only names they may use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np

_F = TypeVar("_F", bound=Callable)


def njit_options(**options: object) -> Callable[[_F], _F]:
    """Records how the kernel module jits the function below (``numba.njit(**options)``) and
    returns it unchanged: in a kernel module this decorator reads ``@numba.njit(...)``."""

    def record(function: _F) -> _F:
        function.njit_options = options  # type: ignore[attr-defined]
        return function

    return record


@njit_options(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp_f32(x):
    """exp(x) of a float32 in float32, within 2 ulp, without a libm call (vectorisable at
    twice the lanes of float64): exp(x) = 2^k exp(r), |r| <= ln(2)/2, exp(r) by Cephes'
    minimax polynomial of degree 7, 2^k from the exponent bits in two halves (subnormals)."""
    xc = min(max(x, np.float32(-104.0)), np.float32(89.0))  # beyond: 0 and inf
    t = xc * np.float32(1.44269504) + np.float32(12582912.0)  # round(x / ln 2), low bits
    k = t - np.float32(12582912.0)
    # ln 2 = 0.693359375 - 2.12194440e-4: k * 0.693359375 is exact (9 + 8 bits).
    r = (xc - k * np.float32(0.693359375)) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = (p * (r * r) + r) + np.float32(1.0)
    ki = np.float32(t).view(np.int32) - np.int32(0x4B400000)
    half = ki >> np.int32(1)
    y = p * np.int32((half + np.int32(127)) << np.int32(23)).view(np.float32) * np.int32(
        (ki - half + np.int32(127)) << np.int32(23)).view(np.float32)
    y = y if x < np.float32(89.0) else np.float32(math.inf)
    return y if x == x else x


@njit_options(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _tanh_f32(x):
    """tanh of a float32 in float32 (as ``_tanh``: e / (e + 2), e = expm1(2|x|), Taylor
    below ln(2)/2, else exp - 1), within 4 ulp; vectorisable at twice the float64 lanes."""
    a = min(abs(x), np.float32(9.0))  # tanh(9) rounds to 1 in float32
    u = np.float32(2.0) * a
    u2 = u * u
    b0 = u + u2 * (np.float32(0.5) + u * np.float32(1.0 / 6))
    b1 = (np.float32(1.0 / 24) + u * np.float32(1.0 / 120)) + u2 * (
        np.float32(1.0 / 720) + u * np.float32(1.0 / 5040))
    small = b0 + (u2 * u2) * b1
    e = small if u < np.float32(0.34657359) else _exp_f32(u) - np.float32(1.0)
    y = math.copysign(e / (e + np.float32(2.0)), x)
    return y if x == x else x


@njit_options(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _log1p_unit_f32(u):
    """``_log1p_unit`` of a float32 in float32 (the series to s^9 suffices: s <= 1/5)."""
    high = u >= np.float32(0.5)
    t = (u - np.float32(1.0)) * np.float32(0.5) if high else u
    s = t / (np.float32(2.0) + t)
    z = s * s
    series = (np.float32(1.0 / 3) + z * np.float32(1.0 / 5)) + (z * z) * (
        np.float32(1.0 / 7) + z * np.float32(1.0 / 9))
    y = np.float32(2.0) * s + (np.float32(2.0) * s) * (z * series)
    return y + (np.float32(0.6931472) if high else np.float32(0.0))


@njit_options(cache=True, fastmath={"contract"}, error_model="numpy")
def _exp(x):
    """exp(x) within 3 ulp, without a libm call, so that loops calling it vectorise:
    exp(x) = 2^k exp(r) with |r| <= ln(2)/2, exp(r) by its Taylor polynomial to degree 12
    (Estrin's scheme), 2^k from the exponent bits in two halves (subnormal results)."""
    if isinstance(x, np.float32):  # resolved when Numba types the call: no branch at run time
        return _exp_f32(x)
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


@njit_options(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _tanh(x):
    """tanh(x) = e / (e + 2) with e = expm1(2|x|), the sign restored; expm1 of a small
    argument by its Taylor polynomial (no cancellation), of a larger one as exp - 1.
    Branch-free, so that loops calling it vectorise; within 10 ulp of math.tanh. Inlined by
    Numba (inline="always"): LLVM finds it too large to inline, and a loop that calls a
    function does not vectorise (65,536 entries: 0.46 ms called, 0.12 ms inlined)."""
    if isinstance(x, np.float32):
        return _tanh_f32(x)
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


@njit_options(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _log1p_unit(u):
    """log1p(u) for 0 <= u <= 1 (softplus reads it at exp(-|x|)) within 2 ulp, branch-free
    so that loops calling it vectorise: log1p(t) = 2 atanh(s), s = t / (2 + t), by its odd
    series in s to s^25, with t = u below 1/2 and t = (u - 1)/2 (exact) plus ln 2 above."""
    if isinstance(u, np.float32):
        return _log1p_unit_f32(u)
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


@njit_options(cache=True, inline="always")
def _sigmoid(x):
    """1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) below: no overflow, one division,
    the branch a select (vectorisable)."""
    e = _exp(-abs(x))
    one = type(e)(1.0)  # float32 stays float32 (a float literal is float64 in Numba)
    return (one if x >= 0.0 else e) / (one + e)


@njit_options(cache=True, inline="always")
def _softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, vectorisable."""
    return max(x, type(x)(0.0)) + _log1p_unit(_exp(-abs(x)))


@njit_options(cache=True, inline="always")
def _relu(x):
    """max(x, 0) with NaN propagated (as NumPy's maximum): NaN <= 0 is false. A select."""
    return type(x)(0.0) if x <= 0.0 else x


@njit_options(cache=True, inline="always")
def _max2(a, b):
    """max(a, b) as one select (vectorisable): NaN if either is NaN, like np.maximum."""
    return b if (a < b) | (b != b) else a


@njit_options(cache=True, inline="always")
def _min2(a, b):
    """min(a, b) as one select (vectorisable): NaN if either is NaN, like np.minimum."""
    return b if (a > b) | (b != b) else a


@njit_options(cache=True, inline="always")
def _heaviside(x, at_zero):
    """1 above 0, 0 below, at_zero at 0, NaN at NaN (as NumPy's heaviside); selects only."""
    y = type(x)(1.0) if x > 0.0 else type(x)(at_zero)
    y = type(x)(0.0) if x < 0.0 else y
    return y if x == x else x


@njit_options(cache=True, inline="always")
def _sign(x):
    """-1, 0 or 1, NaN at NaN (as NumPy's sign); selects only."""
    y = type(x)(1.0) if x > 0.0 else type(x)(0.0)
    y = type(x)(-1.0) if x < 0.0 else y
    return y if x == x else x


@njit_options(cache=True, inline="always")
def _silu(x):
    """x sigmoid(x) (swish): no overflow, as _sigmoid; vectorisable."""
    return x * _sigmoid(x)


@njit_options(cache=True, inline="always")
def _gelu(x):
    """x Phi(x) = x erfc(-x / sqrt 2) / 2: erfc keeps the relative accuracy of the tail
    (x < -5), where 1 + erf(x / sqrt 2) cancels to 0."""
    c = type(x)
    return c(0.5) * x * math.erfc(c(-0.7071067811865476) * x)


@njit_options(cache=True, inline="always")
def _softsign(x):
    """x / (1 + |x|): bounded, no overflow; a select and a division."""
    return x / (type(x)(1.0) + abs(x))


@njit_options(cache=True, inline="always")
def _elu(x, alpha):
    """x above 0, alpha expm1(x) at and below 0 (expm1: no cancellation near 0); NaN stays NaN
    (NaN > 0 is false). The branch not taken may be inf: a select discards it."""
    return x if x > 0.0 else type(x)(alpha) * math.expm1(x)


ALWAYS: tuple[Callable, ...] = (_exp_f32, _tanh_f32, _log1p_unit_f32, _exp, _tanh, _log1p_unit,
                                _sigmoid, _softplus, _relu, _max2, _min2, _heaviside, _sign)
"""The helpers every kernel module carries, in this order (their text is part of the key of
every cached kernel: adding one here changes the source of every kernel)."""

ON_DEMAND: tuple[Callable, ...] = (_silu, _gelu, _softsign, _elu)
"""Helpers a kernel module carries only when its loops call them (they call only ``ALWAYS``
helpers): primitives added later do not change the source of existing kernels."""
