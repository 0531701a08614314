"""The NumPy implementations of the scalar primitives: stable (no overflow at any input) and
NaN-propagating like the kernels' Numba helpers (``numba_impl``). ``symdl.evaluate`` computes
with these; the registry (``registry.PRIMITIVES``) names one per primitive."""

from __future__ import annotations

import math

import numpy as np

erf = np.vectorize(math.erf, otypes=[float])
"""``erf`` elementwise (NumPy has none; SciPy is not a dependency)."""

erfc = np.vectorize(math.erfc, otypes=[float])
"""``erfc`` elementwise (NumPy has none; SciPy is not a dependency)."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only: no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def heaviside(x: np.ndarray, h0: float = 0.0) -> np.ndarray:
    return np.heaviside(x, h0)


def silu(x: np.ndarray) -> np.ndarray:
    """``x σ(x)``: no overflow (``sigmoid`` above)."""
    return x * sigmoid(x)


def gelu(x: np.ndarray) -> np.ndarray:
    """``x Φ(x) = x erfc(-x/√2)/2``: erfc keeps the tail (x < -5) accurate, where
    ``1 + erf(x/√2)`` cancels to 0."""
    return 0.5 * x * erfc(-np.sqrt(0.5) * np.asarray(x, dtype=float))


def softsign(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.abs(x))


def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """``x`` above 0, ``alpha expm1(x)`` at and below: expm1 of ``min(x, 0)`` only, so the
    branch not taken cannot overflow (and warn); NaN stays NaN."""
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
