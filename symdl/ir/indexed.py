"""Node kinds whose entries come from computed positions.

* ``AffineRead``: a tensor read at affine indices, zero outside it. ``X[b, s*t + d*k - p]`` is a
  read of ``X`` over the axes ``(b, t, k)``; a convolution is then an ordinary einsum of the
  kernel with the read (``Y[b, t] = Σ_k W[k] R[b, t, k]``), so its derivative with respect to
  ``W`` is again an einsum with the read (``∂L/∂W = X ⋆ δ``).
* ``AffineScatter``: the transpose of a read. Each entry ``i`` of its argument is added into
  entry ``a(i)`` of a zero tensor (entries mapped outside are dropped). The derivative of a
  read with respect to the tensor it reads is the scatter of the adjoint (the transposed
  convolution, col2im), and the derivative of a scatter is the read again: the pair is closed
  under differentiation, for every stride, dilation and padding, with no selection tensor. A
  scatter whose map is one to one is a reshape (``flatten``: ``(h, w, c) -> h*W*C + w*C + c``).
* ``Take`` and ``TakeAdjoint``: rows of a table picked by an integer index array (an
  embedding, ``E[b, :] = W[idx[b], :]``) and its transpose, the scatter-add of rows.
* ``Max`` along an axis (kept with size 1, as ``LogSumExp``) and ``ArgMaxMask``, the one-hot
  tensor of its first arg max: the derivative of a maximum goes to the first maximal entry,
  the convention of max pooling in PyTorch (as relu's derivative at 0 is 0).

An affine map ``a`` sends the axes ``i`` of the read (or of the scatter's argument) to one
position per axis of the tensor read (or written): ``a_j(i) = offset_j + Σ_k coeffs_j[k] i_k``.
Coefficients and offsets are SymPy integers or integer expressions of dimensions (a reshape
has the coefficient ``C``); one ``AffineMap`` per axis of the tensor on the far side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from symdl.errors import ShapeMismatchError
from symdl.ir import nodes
from symdl.ir.nodes import Node, Shape, _intern, is_zero, zero


@dataclass(frozen=True)
class AffineMap:
    """One position ``offset + Σ_k coeffs[k] i_k`` from the axes ``i`` of an index space."""

    coeffs: tuple[sp.Expr, ...]
    offset: sp.Expr

    @staticmethod
    def of(coeffs, offset=0) -> AffineMap:
        return AffineMap(tuple(sp.sympify(c) for c in coeffs), sp.sympify(offset))

    @staticmethod
    def axis(k: int, rank: int) -> AffineMap:
        """The position ``i_k`` itself."""
        return AffineMap.of([1 if j == k else 0 for j in range(rank)])

    def at(self, point) -> sp.Expr:
        """The position for index values (symbols or numbers) ``point``."""
        return self.offset + sum((c * p for c, p in zip(self.coeffs, point, strict=True)),
                                 sp.Integer(0))

    def widened(self, extra: int) -> AffineMap:
        """The same position over ``extra`` more axes that it does not depend on."""
        return AffineMap(self.coeffs + (sp.Integer(0),) * extra, self.offset)


def passthrough(index: tuple[AffineMap, ...], extra: int) -> tuple[AffineMap, ...]:
    """``index`` over ``extra`` trailing axes appended to both sides, passed through unchanged
    (the seed axes of a tangent)."""
    rank = len(index[0].coeffs) if index else 0
    return (tuple(m.widened(extra) for m in index)
            + tuple(AffineMap.axis(rank + e, rank + extra) for e in range(extra)))


def _check_index(index: tuple[AffineMap, ...], rank: int, far_rank: int, what: str) -> None:
    if len(index) != far_rank:
        raise ShapeMismatchError(
            f"{what}: {len(index)} affine positions for a tensor of rank {far_rank}")
    for m in index:
        if len(m.coeffs) != rank:
            raise ShapeMismatchError(
                f"{what}: an affine position over {len(m.coeffs)} axes, expected {rank}")
        for value in (*m.coeffs, m.offset):
            if value.is_integer is False or value.free_symbols - _dimension_symbols(value):
                raise ShapeMismatchError(
                    f"{what}: the position {m.offset} + {m.coeffs} . i needs integer "
                    "coefficients and offsets (numbers or integer dimensions)")


def _dimension_symbols(value: sp.Expr) -> set:
    return {s for s in value.free_symbols if s.is_integer}


def _is_identity(index: tuple[AffineMap, ...], near: Shape, far: Shape) -> bool:
    if len(near) != len(far) or tuple(near) != tuple(far):
        return False
    return all(m == AffineMap.axis(k, len(near)) for k, m in enumerate(index))


@dataclass(frozen=True, eq=False)
class AffineRead(Node):
    """``arg`` read at affine positions: entry ``i`` (over ``dims``) is
    ``arg[index[0].at(i), ..., index[r-1].at(i)]``, and 0 where a position falls outside
    ``arg`` (zero padding)."""

    arg: Node
    dims: Shape
    index: tuple[AffineMap, ...]
    _fields: ClassVar[tuple[str, ...]] = ("arg", "dims", "index")

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


@dataclass(frozen=True, eq=False)
class AffineScatter(Node):
    """The transpose of ``AffineRead``: a tensor of shape ``dims``, zero but where entries of
    ``arg`` land: entry ``i`` of ``arg`` is added at ``(index[0].at(i), ...)``, and dropped
    when that falls outside ``dims``. ``index`` has one map per axis of the result, over the
    axes of ``arg``."""

    arg: Node
    dims: Shape
    index: tuple[AffineMap, ...]
    _fields: ClassVar[tuple[str, ...]] = ("arg", "dims", "index")

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


@dataclass(frozen=True, eq=False)
class Take(Node):
    """Rows of ``table`` picked by the integer array ``indices``: shape
    ``indices.shape + table.shape[1:]``, entry ``(s, r)`` is ``table[indices[s], r]``."""

    table: Node
    indices: Node
    _fields: ClassVar[tuple[str, ...]] = ("table", "indices")

    def _compute_shape(self) -> Shape:
        return tuple(self.indices.shape) + tuple(self.table.shape[1:])

    def children(self) -> tuple[Node, ...]:
        return (self.table, self.indices)


@dataclass(frozen=True, eq=False)
class TakeAdjoint(Node):
    """The transpose of ``Take``: ``rows`` rows, row ``v`` the sum of the entries ``arg[s]``
    whose ``indices[s]`` is ``v`` (a scatter-add)."""

    arg: Node
    indices: Node
    rows: sp.Expr
    _fields: ClassVar[tuple[str, ...]] = ("arg", "indices", "rows")

    def _compute_shape(self) -> Shape:
        return (self.rows,) + tuple(self.arg.shape[self.indices.rank:])

    def children(self) -> tuple[Node, ...]:
        return (self.arg, self.indices)


@dataclass(frozen=True, eq=False)
class Max(Node):
    """The largest entry along ``axis``, kept as an axis of size 1."""

    arg: Node
    axis: int
    _fields: ClassVar[tuple[str, ...]] = ("arg", "axis")

    def _compute_shape(self) -> Shape:
        dims = list(self.arg.shape)
        dims[self.axis] = sp.Integer(1)
        return tuple(dims)

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


@dataclass(frozen=True, eq=False)
class ArgMaxMask(Node):
    """1 at the first largest entry along ``axis``, 0 elsewhere (the shape of ``arg``)."""

    arg: Node
    axis: int
    _fields: ClassVar[tuple[str, ...]] = ("arg", "axis")

    def _compute_shape(self) -> Shape:
        return self.arg.shape

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


# ---------------------------------------------------------------------------------------------
# Constructors


def affine_read(arg: Node, dims, index) -> Node:
    """``arg`` read at the affine positions ``index`` (one ``AffineMap`` per axis of ``arg``,
    over the axes ``dims`` of the result), zero outside ``arg``."""
    dims = tuple(sp.sympify(d) for d in dims)
    index = tuple(index)
    _check_index(index, len(dims), arg.rank, "a windowed read")
    if is_zero(arg):
        return zero(dims)
    if _is_identity(index, dims, arg.shape):
        return arg
    return _intern(AffineRead(arg, dims, index))


def affine_scatter(arg: Node, dims, index) -> Node:
    """The entries of ``arg`` added at the affine positions ``index`` (one ``AffineMap`` per
    axis of the result, over the axes of ``arg``) of a zero tensor of shape ``dims``."""
    dims = tuple(sp.sympify(d) for d in dims)
    index = tuple(index)
    _check_index(index, arg.rank, len(dims), "a windowed scatter")
    if is_zero(arg):
        return zero(dims)
    if _is_identity(index, arg.shape, dims):
        return arg
    return _intern(AffineScatter(arg, dims, index))


def take(table: Node, indices: Node) -> Node:
    """``table[indices]``: rows of ``table`` (its first axis) picked by an integer array."""
    if table.rank == 0:
        raise ShapeMismatchError("an embedding table needs at least one axis, got a scalar")
    if is_zero(table):
        return zero(tuple(indices.shape) + tuple(table.shape[1:]))
    return _intern(Take(table, indices))


def take_adjoint(arg: Node, indices: Node, rows: sp.Expr) -> Node:
    """The rows of ``arg`` (indexed like ``indices``) added into ``rows`` rows at ``indices``."""
    rows = sp.sympify(rows)
    if tuple(arg.shape[:indices.rank]) != tuple(indices.shape):
        raise ShapeMismatchError(
            f"a scatter-add of shape {arg.shape} by indices of shape {indices.shape}: the "
            "leading axes must be the indices' axes", arg.shape, indices.shape)
    if is_zero(arg):
        return zero((rows,) + tuple(arg.shape[indices.rank:]))
    return _intern(TakeAdjoint(arg, indices, rows))


def _check_axis(arg: Node, axis: int, what: str) -> int:
    if not -arg.rank <= axis < arg.rank:
        raise ShapeMismatchError(f"{what} along axis {axis} of a tensor of shape {arg.shape}",
                                 arg.shape)
    return axis % arg.rank


def max_along(arg: Node, axis: int) -> Node:
    """The maximum of ``arg`` along ``axis``, kept as an axis of size 1."""
    axis = _check_axis(arg, axis, "a maximum")
    if arg.shape[axis] == 1:
        return arg
    return _intern(Max(arg, axis))


def argmax_mask(arg: Node, axis: int) -> Node:
    """The one-hot tensor of the first maximum of ``arg`` along ``axis``."""
    axis = _check_axis(arg, axis, "an arg max")
    return _intern(ArgMaxMask(arg, axis))


@nodes.REBUILD.register(AffineRead)
def _rebuild_read(node: AffineRead, children: list[Node]) -> Node:
    return affine_read(children[0], node.dims, node.index)


@nodes.REBUILD.register(AffineScatter)
def _rebuild_scatter(node: AffineScatter, children: list[Node]) -> Node:
    return affine_scatter(children[0], node.dims, node.index)


@nodes.REBUILD.register(Take)
def _rebuild_take(node: Take, children: list[Node]) -> Node:
    return take(children[0], children[1])


@nodes.REBUILD.register(TakeAdjoint)
def _rebuild_take_adjoint(node: TakeAdjoint, children: list[Node]) -> Node:
    return take_adjoint(children[0], children[1], node.rows)


@nodes.REBUILD.register(Max)
def _rebuild_max(node: Max, children: list[Node]) -> Node:
    return max_along(children[0], node.axis)


@nodes.REBUILD.register(ArgMaxMask)
def _rebuild_argmax_mask(node: ArgMaxMask, children: list[Node]) -> Node:
    return argmax_mask(children[0], node.axis)
