"""Declared assumptions of inputs, checked against the values a kernel or evaluation gets.

A scalar ``Symbol("p", positive=True)`` (or an ``IndexedBase`` declared so) lets SymPy fold
``|p|`` to ``p``, ``sqrt(p**2)`` to ``p`` and ``sign(p)`` to ``1`` while the user writes the
definition, before symdl sees it: the derived formulas and the kernels are then right only
for values that satisfy the declaration. symdl keeps that algebra (it is what the user
asked for, and it gives simpler formulas) and refuses values that violate it, naming the
input and the assumption. NaN satisfies every check (NaN propagates, as everywhere in
symdl); infinities are checked by their sign.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import sympy as sp

# (assumption, test of the values, what a value must be), strongest first: a value that
# violates several declared facts is reported under the one the user most likely wrote.
_CHECKS: tuple[tuple[str, Callable[[np.ndarray], np.ndarray], str], ...] = (
    ("zero", lambda v: v == 0, "0"),
    ("positive", lambda v: v > 0, "> 0"),
    ("negative", lambda v: v < 0, "< 0"),
    ("nonnegative", lambda v: v >= 0, ">= 0"),
    ("nonpositive", lambda v: v <= 0, "<= 0"),
    ("nonzero", lambda v: v != 0, "!= 0"),
    ("even", lambda v: v % 2 == 0, "an even integer"),
    ("odd", lambda v: v % 2 == 1, "an odd integer"),
    ("integer", lambda v: np.floor(v) == v, "an integer"),
)


def declared_checks(symbol: sp.Basic) -> tuple[tuple[str, Callable, str], ...]:
    """The checks that ``symbol``'s declared assumptions call for (none for a
    ``MatrixSymbol``, which carries no assumptions)."""
    if not isinstance(symbol, (sp.Symbol, sp.IndexedBase)):
        return ()
    return _checks_of(symbol)


@functools.lru_cache(maxsize=1024)
def _checks_of(symbol: sp.Basic) -> tuple[tuple[str, Callable, str], ...]:
    facts = symbol.assumptions0
    return tuple(check for check in _CHECKS if facts.get(check[0]) is True)


def violation(symbol: sp.Basic, value: object) -> str | None:
    """A sentence saying how ``value`` violates ``symbol``'s declared assumptions, or None.

    Runs on every kernel call: a plain float is tested without NumPy arrays (about 2 us).
    """
    checks = declared_checks(symbol)
    if not checks:
        return None
    if isinstance(value, float):
        if value != value:
            return None
        failed = next((c for c in checks if not c[1](value)), None)
        return None if failed is None else _message(symbol, failed, value, "")
    array = np.asarray(value, dtype=np.float64)
    unknown = np.isnan(array)
    for check in checks:
        with np.errstate(invalid="ignore"):
            bad = ~(check[1](array) | unknown)
        if bad.any():
            where = "" if array.ndim == 0 else f" at index {np.argwhere(bad)[0].tolist()}"
            return _message(symbol, check, float(array[bad].flat[0]), where)
    return None


def _message(symbol: sp.Basic, check: tuple, found: float, where: str) -> str:
    assumption, _, wanted = check
    return (f"{symbol} was declared {assumption}=True, so it must be {wanted}, but it is "
            f"{found!r}{where}: SymPy simplified the definition with that assumption (|p| to "
            "p for a positive p, floor(k) to k for an integer k), so its formulas hold only "
            "for such values. Pass a value that satisfies it, or declare "
            f"{symbol} without the assumption")


def conform(symbol: sp.Basic, value: object) -> object:
    """``value`` (a random test point) moved to satisfy ``symbol``'s declared assumptions,
    at least 0.5 away from 0 where the sign is declared; a float stays a float."""
    facts = {assumption for assumption, _, _ in declared_checks(symbol)}
    if not facts:
        return value
    v = np.asarray(value, dtype=np.float64)
    magnitude = np.maximum(np.abs(v), 0.5)
    if facts & {"integer", "even", "odd"}:
        magnitude = np.maximum(np.round(magnitude), 1.0)
        if "even" in facts:
            magnitude = 2 * np.ceil(magnitude / 2)
        if "odd" in facts:
            magnitude = magnitude + (np.mod(magnitude, 2) == 0)
    if facts & {"positive", "nonnegative"}:
        v = magnitude
    elif facts & {"negative", "nonpositive"}:
        v = -magnitude
    else:
        v = np.where(v < 0, -magnitude, magnitude)
    if "zero" in facts:
        v = np.zeros_like(v)
    return float(v) if np.ndim(value) == 0 else v


def step_limit(symbol: sp.Basic, value: object) -> float:
    """How far ``value`` may move (a finite-difference probe) and keep the declared sign of
    ``symbol``: half the smallest magnitude where a sign is declared, else unlimited."""
    facts = {assumption for assumption, _, _ in declared_checks(symbol)}
    if not facts & {"positive", "negative", "nonnegative", "nonpositive", "nonzero"}:
        return math.inf
    magnitudes = np.abs(np.asarray(value, dtype=np.float64))
    smallest = float(np.nanmin(magnitudes)) if magnitudes.size else math.inf
    return smallest / 2 if smallest > 0 else math.inf
