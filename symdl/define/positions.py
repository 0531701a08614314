"""Computed positions in index notation: affine indices and integer index arrays.

An index of an array may be any affine combination of index symbols with integer
coefficients and an integer offset: ``X[b, t + k]`` (a window), ``X[b, 2*t + k - 1]`` (stride
2, padding 1), ``X[b, s*t + d*k - p]`` (integer dimensions as coefficients), ``X[b, T - 1 - t]``
(a flip) and ``X[b, 0]`` (a fixed entry). Such an entry is a read of the array at affine
positions (``symdl.ir.affine_read``), **zero outside the array** (zero padding): ``X[t - 1]``
at ``t = 0`` is 0, never ``X[-1]``.

An index may also be one entry of an integer index array, ``W[idx[b], j]`` with
``idx = IndexedBase("idx", shape=(n,), integer=True)``: the rows of ``W`` picked by ``idx``
(``symdl.ir.take``, an embedding). Its values are checked to be integers inside the table
when the derivation is evaluated.

Anything else (``t**2``, ``t*k``, ``floor(t/2)``, ``t/2``) is refused with
``UnsupportedError``.
"""

from __future__ import annotations

import sympy as sp

from symdl import ir
from symdl.errors import UnsupportedError

ACCEPTED = (
    "an index must be an index symbol, an affine combination of index symbols with integer "
    "coefficients and an integer offset (t + k, 2*t + k - 1, s*t + d*k - p, T - 1 - t, 0; "
    "integer numbers or dimensions declared integer=True as coefficients; entries outside "
    "the array read as 0), or one entry of an integer index array (W[idx[b], j] with "
    "IndexedBase('idx', shape=(n,), integer=True))"
)


def index_symbols(index: sp.Basic, dims: set) -> list[sp.Basic]:
    """The index symbols (``Symbol`` or ``Idx``, not dimensions) in ``index``, sorted by name."""
    found = {s for s in index.free_symbols if s not in dims}
    found |= {s for s in index.atoms(sp.Idx) if s not in dims}
    return sorted(found, key=str)


def affine_parts(index: sp.Basic, dims: set,
                 where: sp.Basic) -> tuple[dict[sp.Basic, sp.Expr], sp.Expr]:
    """``index`` as ``offset + Σ_s coeffs[s] s`` over its index symbols ``s``.

    Raises:
        UnsupportedError: ``index`` is not affine in its index symbols, or a coefficient or
            the offset is not an integer (a number or an integer dimension).
    """
    symbols = index_symbols(index, dims)
    coeffs: dict[sp.Basic, sp.Expr] = {}
    offset = sp.Integer(0)
    for term in sp.Add.make_args(sp.expand(index)):
        coeff, rest = term.as_independent(*symbols, as_Add=False) if symbols else (term, 1)
        if rest == 1:
            offset += coeff
        elif rest in symbols:
            coeffs[rest] = coeffs.get(rest, sp.Integer(0)) + coeff
        else:
            raise UnsupportedError(
                f"index {index} in {where}: {rest} is not affine in the index symbols; "
                f"{ACCEPTED}")
    coeffs = {s: c for s, c in coeffs.items() if c != 0}
    for value in (*coeffs.values(), offset):
        if value.is_integer is not True or value.free_symbols - dims:
            raise UnsupportedError(
                f"index {index} in {where}: the coefficient or offset {value} is not an "
                f"integer (a number or a dimension declared integer=True); {ACCEPTED}")
    return coeffs, offset


def index_array(index: sp.Basic, where: sp.Basic) -> sp.Indexed | None:
    """The integer index array entry that ``index`` is (``idx[b]``), or None when ``index``
    reads no array.

    Raises:
        UnsupportedError: ``index`` reads an array but is not one entry of an array declared
            integer (``idx[b] + 1``, a float array ``v[b]``).
    """
    if not index.atoms(sp.Indexed):
        return None
    if not isinstance(index, sp.Indexed):
        raise UnsupportedError(
            f"index {index} in {where}: an index that reads an array must be one entry of an "
            f"integer index array, nothing more (shift the array's values instead); {ACCEPTED}")
    if index.base.is_integer is not True:
        raise UnsupportedError(
            f"index {index} in {where}: {index.base} is not declared integer; create it as "
            f"IndexedBase('{index.base}', shape=(...), integer=True) to use it as an index")
    return index


def index_arrays(roots) -> dict[str, sp.Expr]:
    """The inputs that serve as integer index arrays under ``roots`` (the leaves below the
    indices of a gather or a scatter-add), by name, with the number of rows they index."""
    found: dict[str, sp.Expr] = {}
    for node in ir.topological_order(list(roots)):
        if isinstance(node, (ir.Take, ir.TakeAdjoint)):
            rows = node.table.shape[0] if isinstance(node, ir.Take) else node.rows
            for leaf in ir.topological_order([node.indices]):
                if isinstance(leaf, ir.Leaf):
                    found[leaf.name] = rows
    return found
