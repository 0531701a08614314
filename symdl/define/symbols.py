"""Names of the SymPy symbols a definition is made of, and fresh names beside them."""

from __future__ import annotations

import sympy as sp


def symbol_name(p: sp.Basic) -> str:
    """The name a user gave a parameter or input: ``W`` for ``MatrixSymbol("W", n, d)``,
    ``X`` for ``IndexedBase("X")``, ``lam`` for ``Symbol("lam")``."""
    if isinstance(p, sp.MatrixSymbol):
        return str(p.name)
    if isinstance(p, sp.IndexedBase):
        return str(p.label)
    return str(p)


def fresh_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``, ... : the first not in ``taken`` (then added to
    it), so that a generated input never merges with a user's array of the same name."""
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate
