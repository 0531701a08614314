"""Independent reference machinery for the symdl test suite (helpers, not tests).

Nothing here calls symdl's derivation or evaluation code. The reference value of a definition
is computed by SymPy itself: bind the dimension symbols to integers, expand every matrix
expression into explicit entries (structurally, from each node's mathematical definition),
and compile with ``sympy.lambdify`` over NumPy. Derivatives of that reference come from
central finite differences, so a derived formula is checked against the *original*
definition, never against another symdl output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp

# --------------------------------------------------------------------------------------------
# Dimension bindings and random inputs

SIZES_SMALL = (1, 2, 3, 5, 7)
"""Sizes a dimension symbol is bound to; 1 and odd sizes catch squeezed and transposed axes."""


def bindings(symbols: tuple[sp.Symbol, ...], table: list[tuple[int, ...]]) -> list[dict]:
    """``[{n: 3, d: 2}, ...]`` from a table of sizes, one tuple per binding."""
    return [dict(zip(symbols, row, strict=True)) for row in table]


def binding_id(binding: Mapping[sp.Symbol, int]) -> str:
    """A readable pytest id such as ``n3-d1``."""
    return "-".join(f"{k}{v}" for k, v in binding.items())


def concrete_shape(shape: tuple, dims: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
    """The integer shape of a symbolic shape once ``dims`` are bound."""
    return tuple(int(sp.sympify(s).subs(dims)) for s in shape)


def shape_of(p: sp.Basic, dims: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
    """Integer shape of a MatrixSymbol, shaped IndexedBase, or () for a scalar Symbol."""
    if isinstance(p, sp.MatrixSymbol):
        return concrete_shape(p.shape, dims)
    if isinstance(p, sp.IndexedBase):
        return concrete_shape(p.shape, dims)
    return ()


def name_of(p: sp.Basic) -> str:
    if isinstance(p, sp.MatrixSymbol):
        return str(p.name)
    if isinstance(p, sp.IndexedBase):
        return str(p.label)
    return str(p)


def random_values(symbols: list[sp.Basic], dims: Mapping[sp.Symbol, int],
                  rng: np.random.Generator, scale: float = 1.0,
                  positive: tuple[str, ...] = ()) -> dict[str, np.ndarray | float]:
    """Standard normal arrays (times ``scale``) for each symbol, by name.

    Names listed in ``positive`` get values in [0.5, 2] (for ``log``).
    """
    values: dict[str, np.ndarray | float] = {}
    for s in symbols:
        shape = shape_of(s, dims)
        if name_of(s) in positive:
            a = rng.uniform(0.5, 2.0, size=shape)
        else:
            a = scale * rng.standard_normal(size=shape)
        values[name_of(s)] = float(a) if shape == () else a
    return values


def one_hot(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A ``rows x cols`` matrix whose rows are random one-hot vectors."""
    return np.eye(cols)[rng.integers(0, cols, size=rows)]


# --------------------------------------------------------------------------------------------
# Finite differences


def step(x: float) -> float:
    """The central-difference step for an entry of value ``x``."""
    return 1e-6 * max(1.0, abs(x))


def central_diff(f: Callable[[np.ndarray | float], np.ndarray | float],
                 x: np.ndarray | float) -> np.ndarray:
    """Central finite differences of ``f`` at ``x``, entry by entry, in float64.

    For a scalar ``f`` the result has the shape of ``x``; for an array-valued ``f`` it has
    shape ``f(x).shape + x.shape`` (output axes first, then the axes of ``x``).
    """
    x = np.array(x, dtype=np.float64)
    out_shape = np.shape(f(x.copy() if x.shape else float(x)))
    result = np.zeros(out_shape + x.shape)
    for idx in np.ndindex(*x.shape):
        h = step(float(x[idx]))
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fp = np.asarray(f(xp if x.shape else float(xp)), dtype=np.float64)
        fm = np.asarray(f(xm if x.shape else float(xm)), dtype=np.float64)
        result[(Ellipsis,) + idx] = (fp - fm) / (2 * h)
    return result


def fd_gradient(f: Callable[[Mapping], float], values: Mapping, name: str) -> np.ndarray:
    """∂f/∂values[name] by central differences; ``f`` takes the full dict of values."""

    def along(x):
        changed = dict(values)
        changed[name] = x
        return f(changed)

    return central_diff(along, values[name])


# --------------------------------------------------------------------------------------------
# SymPy as the independent evaluator

# The reusable part lives in symdl.verify.reference (symdl.check uses it too); it shares no
# code with symdl's IR, autodiff, evaluator or code generator.
from symdl.verify.reference import (  # noqa: E402
    NUMPY_REFERENCE,
    explicit,
    sympy_function,
)

__all__ = ["NUMPY_REFERENCE", "explicit", "sympy_function"]
