"""Whether a loss splits over the rows of its data, decided from the derivation's IR.

A chunk of rows can be evaluated on its own, and the chunks' results combined exactly, when
the loss has the form

    L(n) = s(n) * sum_i r(row i; params) + sum_j g_j(n; params)

with a per-row term ``r`` that reads only its own row of every data array and does not depend
on the row count ``n``, one normalisation ``s(n)`` for every sum over the rows (``1`` for a
sum, ``1/n`` for a mean), and data-free terms ``g_j`` (a regulariser, a prior, ``n log
sigma``). A chunk of ``m`` rows evaluated by the same kernel gives ``L_c = s(m) R_c + sum_j
g_j(m)``; with weights ``w_c = s(N) / s(m_c)`` the sum ``sum_c w_c L_c`` is ``L(N)`` whenever
each ``g_j(n) / s(n)`` is proportional to ``n`` (a regulariser beside a mean, ``n log sigma``
beside a sum). Derivatives with respect to the parameters are linear in ``L``, so gradients,
Hessian blocks and Hessian-vector products combine with the same weights.

The analysis walks the IR once and gives every node one of three kinds:

* ``CONST``: reads no data row (parameters, scalars, constants); ``scale`` is its
  dependence on ``n`` as a factor (``n`` for ``n log sigma``), ``None`` where it is not one;
* ``ROWS``: has the batch dimension on one axis and its row ``i`` reads only row ``i``;
* ``SUM``: a linear function of sums over the rows (``scale`` the normalisation ``s(n)``)
  plus data-free terms (their scales in ``extras``).

Everything else couples rows and is refused with ``NotRowSeparableError``: a statistic over
all rows used per row again (batch normalisation's mean and variance), a nonlinear function
of a sum over rows (the log of a mean), a product of two sums, a softmax or log-sum-exp along
the rows, a linear solve with a data-dependent matrix, two row indices in one product (``X
X^T``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import sympy as sp

from symdl import ir
from symdl.define.symbols import symbol_name
from symdl.derivation import Derivation
from symdl.errors import DerivationError
from symdl.ir.rules import Rules

CONST, ROWS, SUM = "const", "rows", "sum"


class NotRowSeparableError(DerivationError):
    """The loss couples the rows of its data: a chunk of rows cannot be evaluated alone."""


@dataclass(frozen=True)
class _Info:
    kind: str
    axis: int | None = None  # ROWS: the axis of the batch dimension
    scale: sp.Expr | None = sp.Integer(1)  # the node's n-dependence as a factor
    extras: tuple[sp.Expr | None, ...] = ()  # SUM: the scales of its data-free terms


@dataclass(frozen=True)
class RowSplit:
    """How a row-separable loss combines over chunks of rows.

    Attributes:
        rows: the batch dimension symbol (``n``).
        data: the inputs chunked by rows, by name, with the axis that holds the rows.
        shared: every other input (parameters, scalars, data without the batch dimension):
            the same on every chunk.
        scale: the normalisation ``s(n)`` of the sums over rows (``1/n`` for a mean).
    """

    rows: sp.Symbol
    data: dict[str, int]
    shared: tuple[str, ...]
    scale: sp.Expr
    _weight: object = field(default=None, repr=False, compare=False)

    def weight(self, chunk_rows: int, total_rows: int) -> float:
        """The factor ``s(N) / s(m)`` of a chunk of ``m`` rows out of ``N``."""
        ratio = self.scale.subs(self.rows, total_rows) / self.scale.subs(self.rows, chunk_rows)
        return float(ratio)


def batch_dimension(der: Derivation, rows: str | sp.Symbol | None = None) -> sp.Symbol:
    """The batch dimension: ``rows`` when given (a symbol or its name), else the one symbol
    that every array input other than the parameters has as its first axis.

    Raises:
        NotRowSeparableError: ``rows`` is not a dimension of the derivation, or none (or more
            than one) can be inferred.
    """
    dims = {str(d): d for d in der.dims}
    if rows is not None:
        key = str(rows)
        if key not in dims:
            raise NotRowSeparableError(
                f"rows={rows!r} is not a dimension of this derivation (its dimensions: "
                f"{sorted(dims)}); pass the symbol that counts the examples, e.g. rows='n'")
        return dims[key]
    params = {symbol_name(p) for p in der.wrt}
    firsts = {leaf.shape[0] for name, leaf in der.leaves.items()
              if name not in params and leaf.rank > 0}
    candidates = {d for d in firsts if isinstance(d, sp.Symbol) and d in der.dims}
    if len(firsts) == 1 and len(candidates) == 1:
        return candidates.pop()
    raise NotRowSeparableError(
        "cannot tell the batch dimension: the data arrays' first axes are "
        f"{sorted(map(str, firsts)) or 'none'}; pass rows='n' (the symbol that counts the "
        "examples)")


def row_split(der: Derivation, rows: str | sp.Symbol | None = None) -> RowSplit:
    """Decides from the IR whether ``der``'s loss is a sum or mean over the batch dimension
    with no term coupling rows (see the module docstring), and how chunks combine.

    Raises:
        NotRowSeparableError: the loss is not a scalar, couples rows, mixes normalisations,
            or has a parameter with the batch dimension.
    """
    if not isinstance(der, Derivation):
        raise DerivationError(f"chunked evaluation needs a Derivation (symdl.derive(loss, "
                              f"wrt=[...])), got {type(der).__name__}")
    if not der.is_scalar:
        raise NotRowSeparableError(
            f"the definition is a {der.output.shape} tensor, not a scalar loss: reduce it "
            "over the rows (symdl.mean, symdl.total) to evaluate it in chunks")
    n = batch_dimension(der, rows)
    info = _Analysis(n).info(der.output)
    if info.kind != SUM:
        raise NotRowSeparableError(
            f"the loss does not sum over the rows of {n}: it reads no data row, so there is "
            "nothing to split (evaluate it with der.compile() directly)")
    for extra in info.extras:
        ratio = None if extra is None else sp.simplify(extra / info.scale / n)
        if ratio is None or n in ratio.free_symbols:
            raise NotRowSeparableError(
                f"the loss adds a term that reads no data row, scaled by "
                f"{extra if extra is not None else 'a non-factorable function of ' + str(n)}, "
                f"to a sum over the rows normalised by {info.scale}: a chunk would count it "
                "once per chunk. Chunks combine exactly when such terms sit beside a mean "
                "(divide the sum over rows by n) or grow like n (n*log(sigma)); add the "
                "regulariser on the driver otherwise")
    params = {symbol_name(p) for p in der.wrt}
    per_row = sorted(p for p in params if n in der.leaves.get(p, _NO_LEAF).shape)
    if per_row:
        raise NotRowSeparableError(
            f"parameters {per_row} have the batch dimension {n}: chunked evaluation trains "
            "parameters shared by every row; treat per-row values as data")
    data, shared = {}, []
    for name, leaf in der.leaves.items():
        if n in leaf.shape:
            data[name] = leaf.shape.index(n)
        else:
            shared.append(name)
    return RowSplit(n, data, tuple(shared), sp.simplify(info.scale))


class _RefusalError(Exception):
    """Why a node couples rows (turned into ``NotRowSeparableError`` with its location)."""


def _where(node: ir.Node, later: list[ir.Node]) -> str:
    """The first named step after ``node`` whose definition contains it."""
    for named in later:
        if isinstance(named, ir.Named) and (named is node or any(
                item is node for item in ir.topological_order([named.body]))):
            return f"the step defining {named.name}"
    return "the loss"


class _NoLeaf:
    shape: tuple = ()


_NO_LEAF = _NoLeaf()


def _n_free(expr: sp.Expr | None, n: sp.Symbol) -> bool:
    return expr is not None and n not in sp.sympify(expr).free_symbols


def _same_scale(a: sp.Expr | None, b: sp.Expr | None, n: sp.Symbol) -> bool:
    return a is not None and b is not None and _n_free(sp.simplify(a / b), n)


class _Analysis:
    """One pass over the IR (memoised: the IR is a DAG) classifying each node."""

    def __init__(self, n: sp.Symbol):
        self.n = n
        self.memo: dict[int, _Info] = {}

    def refuse(self, why: str) -> _RefusalError:
        return _RefusalError(why)

    def info(self, node: ir.Node) -> _Info:
        # Iterative post-order: chains of a thousand named steps must not recurse.
        order = ir.topological_order([node])
        for k, item in enumerate(order):
            if id(item) in self.memo:
                continue
            try:
                self.memo[id(item)] = self._classify(item)
            except _RefusalError as refusal:
                raise NotRowSeparableError(
                    f"the loss is not row-separable over {self.n}: {refusal} (in "
                    f"{_where(item, order[k:])}). A chunk's result would depend on the other "
                    "chunks, so the loss cannot be evaluated in chunks of rows; evaluate it "
                    "in memory with der.compile(), or write it as a sum or mean of per-row "
                    "terms") from None
        return self.memo[id(node)]

    def _check_shape(self, node: ir.Node) -> None:
        for dim in node.shape:
            dim = sp.sympify(dim)
            if dim != self.n and self.n in dim.free_symbols:
                raise self.refuse(f"an axis of size {dim} depends on the row count")

    def _classify(self, node: ir.Node) -> _Info:
        self._check_shape(node)
        return ROW_SPLIT(node, self)

    def kids(self, node: ir.Node) -> list[_Info]:
        """What is known of the node's children (they are classified first)."""
        return [self.memo[id(c)] for c in node.children()]

    def along_axis(self, node: ir.LogSumExp | ir.Softmax, kids: list[_Info]) -> _Info:
        (arg,) = kids
        what = type(node).__name__.lower()
        if arg.kind == SUM:
            raise self.refuse(f"a {what} of a sum over the rows (a nonlinear function "
                              "of a batch statistic)")
        if arg.kind == ROWS and arg.axis == node.axis:
            raise self.refuse(f"a {what} along the rows normalises over the whole batch")
        if not _n_free(arg.scale, self.n):
            if arg.kind == ROWS:
                raise self.refuse(f"a {what} of a row term scaled by {arg.scale}")
            return _Info(CONST, scale=None)
        return _Info(arg.kind, arg.axis)

    def solve(self, node: ir.Solve, kids: list[_Info]) -> _Info:
        a, b = kids
        if a.kind != CONST or self.n in node.a.shape:
            raise self.refuse("a linear solve whose matrix depends on the data rows")
        if b.kind == ROWS and b.axis == 0:
            raise self.refuse("a linear solve along the rows")
        scale = None if a.scale is None or b.scale is None else b.scale / a.scale
        extras = tuple(None if e is None or a.scale is None else e / a.scale
                       for e in b.extras)
        return _Info(b.kind, b.axis, scale, extras)

    def leaf(self, node: ir.Leaf) -> _Info:
        axes = [k for k, d in enumerate(node.shape) if d == self.n]
        if len(axes) > 1:
            raise self.refuse(f"{node.name} has the batch dimension on two axes")
        return _Info(ROWS, axes[0]) if axes else _Info(CONST)

    def einsum(self, node: ir.Einsum, kids: list[_Info]) -> _Info:
        n = self.n
        rest, coeff_n = sp.sympify(node.coeff).as_independent(n, as_Add=False)
        del rest
        row_labels: set[int] = set()
        sums = [k for k in kids if k.kind == SUM]
        scale = coeff_n
        for op, spec, kid in zip(node.operands, node.specs, kids, strict=True):
            n_labels = {lab for lab, d in zip(spec, op.shape, strict=True) if d == n}
            if kid.kind == ROWS:
                row_labels.add(spec[kid.axis])
            elif n_labels:
                row_labels |= n_labels  # a constant along the rows (ones, a broadcast bias)
            scale = None if scale is None or kid.scale is None else scale * kid.scale
        has_rows = any(k.kind == ROWS for k in kids)
        if len(row_labels) > 1:
            raise self.refuse("a product over two row indices (pairs of rows, as in X X^T, or a "
                              "product of two sums over the rows)")
        if sums and (has_rows or row_labels & set(node.out)):
            raise self.refuse("a statistic over all rows (a sum or mean over the batch) is "
                              "used again row by row, as batch normalisation's mean and "
                              "variance are")
        if len(sums) > 1:
            raise self.refuse("a product of two sums over the rows (nonlinear in the batch)")
        if sums:
            (s,) = sums
            factor = None if scale is None or s.scale is None else scale / s.scale
            extras = tuple(None if e is None or factor is None else e * factor
                           for e in s.extras)
            return _Info(SUM, None, scale, extras)
        if has_rows:
            (label,) = row_labels
            if scale is None:
                raise self.refuse("a per-row term multiplied by a function of the row count")
            if label in node.out:
                if list(node.out).count(label) != 1:
                    raise self.refuse("the batch dimension on two axes of one product")
                return _Info(ROWS, list(node.out).index(label), scale)
            return _Info(SUM, None, scale)
        # Data-free: a row label summed over ones multiplies by n (folded by the constructor
        # in practice); kept exact by leaving the scale unknown.
        if row_labels and not row_labels & set(node.out):
            return _Info(CONST, scale=None)
        return _Info(CONST, scale=scale)

    def map(self, node: ir.Map, kids: list[_Info]) -> _Info:
        n = self.n
        if any(k.kind == SUM for k in kids):
            raise self.refuse(f"the function {node.fn.expr} of a sum over the rows (a "
                              "nonlinear function of a batch statistic, such as the log of a "
                              "mean or 1/sqrt of a variance)")
        depends = n in node.fn.free_symbols or not all(_n_free(k.scale, n) for k in kids)
        rows = [k for k in kids if k.kind == ROWS]
        if rows:
            if depends:
                raise self.refuse(f"the per-row function {node.fn.expr} depends on the row "
                                  "count")
            return _Info(ROWS, rows[0].axis)
        return _Info(CONST, scale=None if depends else sp.Integer(1))

    def add(self, kids: list[_Info]) -> _Info:
        n = self.n
        sums = [k for k in kids if k.kind == SUM]
        rows = [k for k in kids if k.kind == ROWS]
        consts = [k for k in kids if k.kind == CONST]
        if sums:
            first = sums[0].scale
            if not all(_same_scale(s.scale, first, n) for s in sums):
                raise self.refuse("sums over the rows with different normalisations ("
                                  + ", ".join(str(s.scale) for s in sums) + ") added together")
            extras = [e for s in sums for e in s.extras] + [c.scale for c in consts]
            return _Info(SUM, None, first, tuple(extras))
        if rows:
            first = rows[0].scale
            if not all(_same_scale(r.scale, first, n) for r in rows):
                raise self.refuse("per-row terms with different factors of the row count "
                                  "added together")
            if consts and not all(_same_scale(c.scale, first, n) for c in consts):
                raise self.refuse("a per-row term plus a term that depends on the row count")
            return _Info(ROWS, rows[0].axis, first)
        first = consts[0].scale
        same = all(_same_scale(c.scale, first, n) for c in consts)
        return _Info(CONST, scale=first if same else None)


def chunk_weights(split: RowSplit, chunk_rows: Mapping[int, int] | list[int]) -> list[float]:
    """The weight of each chunk (by its row count) so that the weighted sum of the chunks'
    results is the result on all rows."""
    counts = list(chunk_rows.values() if isinstance(chunk_rows, Mapping) else chunk_rows)
    total = sum(counts)
    return [split.weight(m, total) for m in counts]


ROW_SPLIT: Rules[Callable[[ir.Node, _Analysis], _Info]] = Rules("the row-separability analysis")
"""node kind -> (node, the analysis) -> how the node depends on the rows."""


@ROW_SPLIT.register(ir.Named)
def _named(node: ir.Named, analysis: _Analysis) -> _Info:
    return analysis.memo[id(node.body)]


@ROW_SPLIT.register(ir.Leaf)
def _leaf(node: ir.Leaf, analysis: _Analysis) -> _Info:
    return analysis.leaf(node)


@ROW_SPLIT.register(ir.Ones, ir.Zero, ir.Identity)
def _constant(node: ir.Node, analysis: _Analysis) -> _Info:
    return _Info(CONST)


@ROW_SPLIT.register(ir.Einsum)
def _einsum(node: ir.Einsum, analysis: _Analysis) -> _Info:
    return analysis.einsum(node, analysis.kids(node))


@ROW_SPLIT.register(ir.Map)
def _map(node: ir.Map, analysis: _Analysis) -> _Info:
    return analysis.map(node, analysis.kids(node))


@ROW_SPLIT.register(ir.Add)
def _add(node: ir.Add, analysis: _Analysis) -> _Info:
    return analysis.add(analysis.kids(node))


@ROW_SPLIT.register(ir.LogSumExp, ir.Softmax)
def _along_axis(node: ir.LogSumExp | ir.Softmax, analysis: _Analysis) -> _Info:
    return analysis.along_axis(node, analysis.kids(node))


@ROW_SPLIT.register(ir.Solve)
def _solve(node: ir.Solve, analysis: _Analysis) -> _Info:
    return analysis.solve(node, analysis.kids(node))


@ROW_SPLIT.register(ir.Det)
def _det(node: ir.Det, analysis: _Analysis) -> _Info:
    (a,) = analysis.kids(node)
    if a.kind != CONST:
        raise analysis.refuse("a determinant of a matrix that depends on the data rows")
    return _Info(CONST)


@ROW_SPLIT.register(ir.MatrixFunction)
def _matrix_function(node: ir.MatrixFunction, analysis: _Analysis) -> _Info:
    (a,) = analysis.kids(node)
    if a.kind != CONST:
        raise analysis.refuse("a norm, singular values or eigenvalues of a matrix that depends "
                              "on the data rows")
    return _Info(CONST)



# ---------------------------------------------------------------------------------------------
# Computed positions (symdl.ir.indexed). A window or scatter keeps the rows apart when its map
# is the identity on the batch axis and no other position depends on it (a convolution, a
# pooling over each image); anything that moves entries across rows mixes them. A gather
# picks rows of a shared table, one per index (rows of the index array stay rows); a
# scatter-add over the rows sums them (an embedding's gradient is a sum over the batch).


def _batch_position(index, near: int, n: sp.Symbol, near_dims, far_dims) -> int | None:
    """The far axis that is exactly near axis ``near`` (both of size ``n``), when no other
    far axis depends on it; else None."""
    for j, m in enumerate(index):
        if (m.offset == 0 and m.coeffs[near] == 1 and far_dims[j] == n
                and near_dims[near] == n
                and all(c == 0 for k, c in enumerate(m.coeffs) if k != near)
                and all(other.coeffs[near] == 0 for i, other in enumerate(index) if i != j)):
            return j
    return None


@ROW_SPLIT.register(ir.AffineRead)
def _affine_read(node: ir.AffineRead, analysis: _Analysis) -> _Info:
    (arg,) = analysis.kids(node)
    if arg.kind != ROWS:
        return arg  # linear: a window of a constant or of a sum over the rows is one too
    for near in range(len(node.dims)):
        if _batch_position(node.index, near, analysis.n, node.dims, node.arg.shape) == arg.axis:
            return _Info(ROWS, near, arg.scale)
    raise analysis.refuse("a window that moves entries across the batch axis (it must read "
                          "each row at its own position, as a convolution over each image does)")


@ROW_SPLIT.register(ir.AffineScatter)
def _affine_scatter(node: ir.AffineScatter, analysis: _Analysis) -> _Info:
    (arg,) = analysis.kids(node)
    if arg.kind != ROWS:
        return arg
    far = _batch_position(node.index, arg.axis, analysis.n, node.arg.shape, node.dims)
    if far is None:
        raise analysis.refuse("a scatter that moves entries across the batch axis")
    return _Info(ROWS, far, arg.scale)


@ROW_SPLIT.register(ir.Take)
def _take(node: ir.Take, analysis: _Analysis) -> _Info:
    table, indices = analysis.kids(node)
    if table.kind == ROWS:
        raise analysis.refuse("a gather of rows from a table indexed by the batch (each row "
                              "would read other rows)")
    if indices.kind == ROWS:
        if table.kind == SUM:
            raise analysis.refuse("a statistic over all rows gathered again row by row")
        return _Info(ROWS, indices.axis, table.scale)
    return table


@ROW_SPLIT.register(ir.TakeAdjoint)
def _take_adjoint(node: ir.TakeAdjoint, analysis: _Analysis) -> _Info:
    arg, indices = analysis.kids(node)
    if indices.kind == ROWS:
        if arg.kind == SUM or (arg.kind == ROWS and arg.axis != indices.axis):
            raise analysis.refuse("a scatter-add over the batch of a term that is not "
                                  "per row along the same axis")
        return _Info(SUM, None, arg.scale)  # each row adds into the table: a sum over rows
    if arg.kind == ROWS:
        rank = node.indices.rank
        if arg.axis < rank:
            raise analysis.refuse("a scatter-add whose positions mix the batch rows")
        return _Info(ROWS, arg.axis - rank + 1, arg.scale)
    return arg


@ROW_SPLIT.register(ir.Max, ir.ArgMaxMask)
def _max_along(node: ir.Max | ir.ArgMaxMask, analysis: _Analysis) -> _Info:
    # A maximum along an axis is nonlinear, as a log-sum-exp: the same rules.
    return analysis.along_axis(node, analysis.kids(node))



@ROW_SPLIT.register(ir.Scan)
def _scan(node: ir.Scan, analysis: _Analysis) -> _Info:
    kids = analysis.kids(node)
    if any(k.kind != CONST for k in kids):
        raise analysis.refuse("a recurrence (symdl.scan) over the data rows")
    return _Info(CONST)
