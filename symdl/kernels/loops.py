"""Nodes computed inside loops: their iteration space, the operands they read at which loop
variables, and the size of the code they become. Each is a rule table by node kind
(``symdl.ir.rules``)."""

from __future__ import annotations

import sympy as sp

from symdl import ir
from symdl.ir.rules import Rules


def summed_labels(node: ir.Einsum) -> list[int]:
    """Labels that are summed over (size-1 labels excluded: a sum of one term is no sum)."""
    dims = node.label_dims()
    return [lab for lab in dims if lab not in node.out and dims[lab] != 1]


def is_reduction(node: ir.Node) -> bool:
    """Whether ``node`` sums over a loop variable (its value is complete after the loop)."""
    return isinstance(node, ir.Einsum) and bool(summed_labels(node))


def is_value(node: ir.Node) -> bool:
    """Leaves and constants: read directly, never computed."""
    return isinstance(node, (ir.Leaf, ir.Ones, ir.Zero, ir.Identity)) or ir.is_scalar_constant(node)


def _never(what: str):
    def rule(node: ir.Node, *args) -> None:
        raise TypeError(f"symdl internal error: a {type(node).__name__} node is never {what}")
    return rule


_POINTWISE = Rules("test for pointwise nodes", {
    (ir.Map, ir.Add, ir.LogSumExp, ir.Softmax): lambda node: True,
    ir.Einsum: lambda node: bool(node.operands) and not summed_labels(node),
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Solve, ir.Det, ir.Named): lambda node: False,
})


def is_pointwise(node: ir.Node) -> bool:
    """Whether each entry of ``node`` depends on the entries of its operands at its index."""
    return _POINTWISE(node)


_ROW_STATS = Rules("row statistics", {
    (ir.LogSumExp, ir.Softmax): lambda node: (node.arg, node.axis),
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Einsum, ir.Map, ir.Add, ir.Solve, ir.Det,
     ir.Named):
        lambda node: None,
})


def row_stats_of(node: ir.Node) -> tuple[ir.Node, int] | None:
    """``(arg, axis)`` whose row maximum and sum of exponentials ``node`` reads, if any."""
    return _ROW_STATS(node)


def iteration(node: ir.Node) -> tuple[tuple, tuple]:
    """(loop dims, loop variable of each axis of the node) for a node computed in a loop.

    A reduction iterates over its output labels, then its summed labels.
    """
    if is_reduction(node):
        dims = node.label_dims()
        order = [lab for lab in node.out if dims[lab] != 1] + summed_labels(node)
        loop_dims = tuple(dims[lab] for lab in order)
        axis_vars = tuple(order.index(lab) if dims[lab] != 1 else None for lab in node.out)
        return loop_dims, axis_vars
    loop_dims = tuple(d for d in node.shape if d != 1)
    axis_vars, k = [], 0
    for d in node.shape:
        if d == 1:
            axis_vars.append(None)
        else:
            axis_vars.append(k)
            k += 1
    return loop_dims, tuple(axis_vars)


_OPERAND_READS = Rules("loop reads", {
    ir.Einsum: lambda node, loop_vars: [
        (op, tuple(loop_vars[lab] for lab in spec))
        for op, spec in zip(node.operands, node.specs, strict=True)],
    (ir.Map, ir.Add): lambda node, loop_vars: [(c, loop_vars) for c in node.children()],
    (ir.LogSumExp, ir.Softmax): lambda node, loop_vars: [(node.arg, loop_vars)],
    # Values are read, not computed; a solve is a step of its own; names are lowered away.
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Solve, ir.Det, ir.Named):
        lambda node, loop_vars: [],
})


def operand_reads(node: ir.Node, loop_vars) -> list[tuple[ir.Node, tuple]]:
    """The operands of a loop-computed node and the loop variables each is read at.

    ``loop_vars`` maps each label (einsum) or axis (elementwise) to a loop variable.
    """
    return _OPERAND_READS(node, loop_vars)


def einsum_label_vars(node: ir.Einsum) -> dict[int, object]:
    """Loop variable per label of a loop-computed einsum (None for size-1 labels)."""
    dims = node.label_dims()
    _, axis_vars = iteration(node)
    mapping: dict[int, object] = {lab: None for lab in dims}
    for lab, var in zip(node.out, axis_vars, strict=True):
        mapping[lab] = var
    if summed_labels(node):
        start = sum(1 for lab in node.out if dims[lab] != 1)
        for k, lab in enumerate(summed_labels(node)):
            mapping[lab] = start + k
    return mapping


_OWN_LOOP_VARS = Rules("loop variables", {
    ir.Einsum: einsum_label_vars,
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Map, ir.Add, ir.LogSumExp, ir.Softmax,
     ir.Solve, ir.Det, ir.Named): lambda node: iteration(node)[1],
})


def node_reads(node: ir.Node) -> list[tuple[ir.Node, tuple]]:
    """Operand reads of ``node`` in its own loop variables (windows and gathers read
    through: ``through``)."""
    return through(operand_reads(node, _OWN_LOOP_VARS(node)))


def _map_cost(node: ir.Map) -> int:
    calls = sum(1 for _ in sp.preorder_traversal(node.fn.expr) if isinstance(_, sp.Function))
    return 1 + len(node.args) + 12 * calls


_LOOP_COST = Rules("loop cost", {
    ir.Map: _map_cost,
    (ir.LogSumExp, ir.Softmax): lambda node: 14,
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Einsum, ir.Add, ir.Solve, ir.Det,
     ir.Named):
        lambda node: 1 + len(node.children()),
})


def loop_cost(node: ir.Node) -> int:
    """The approximate size of the code a loop member becomes (see ``plan.MAX_LOOP_COST``)."""
    return _LOOP_COST(node)


_ENTRY_FLOPS = Rules("operation count", {
    ir.Einsum: lambda node, reduction: (
        max(len(node.operands) - 1, 0) + (1 if reduction else 0) + (node.coeff != 1)),
    ir.Map: lambda node, reduction: max(sp.count_ops(node.fn.expr), 1),
    ir.Add: lambda node, reduction: len(node.terms) - 1,
    (ir.LogSumExp, ir.Softmax): lambda node, reduction: 3,
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Solve, ir.Det, ir.Named):
        _never("a loop member"),
})


def entry_flops(node: ir.Node, reduction: bool) -> int:
    """Floating-point operations per loop iteration of a loop member."""
    return _ENTRY_FLOPS(node, reduction)


TABLES = (_POINTWISE, _ROW_STATS, _OPERAND_READS, _OWN_LOOP_VARS, _LOOP_COST, _ENTRY_FLOPS)
"""The rule tables of this module (their coverage of every node kind is tested)."""


# A matrix function (norm, singular values, eigenvalues) is a step of its own, as a solve.
_POINTWISE.register(ir.MatrixFunction)(lambda node: False)
_ROW_STATS.register(ir.MatrixFunction)(lambda node: None)
_OPERAND_READS.register(ir.MatrixFunction)(lambda node, loop_vars: [])
_OWN_LOOP_VARS.register(ir.MatrixFunction)(lambda node: iteration(node)[1])
_LOOP_COST.register(ir.MatrixFunction)(lambda node: 1 + len(node.children()))
_ENTRY_FLOPS.register(ir.MatrixFunction)(_never("a loop member"))



# ---------------------------------------------------------------------------------------------
# Computed positions (symdl.ir.indexed). A windowed read (``AffineRead``) and a gather
# (``Take``) are never computed into arrays of their own where a loop reads them: the loop reads
# the tensor underneath at the computed position (``Through``), with a bounds check for a
# window. A scatter (``AffineScatter``, ``TakeAdjoint``) and the maxima (``Max``,
# ``ArgMaxMask``) are steps of their own (``steps.ScatterLoop``, ``steps.RowMax``); inside a
# loop, ``Max`` and ``ArgMaxMask`` read the maxima and first arg maxima that step stores.

INLINE_READS = (ir.AffineRead, ir.Take)
"""Kinds a loop reads through, at computed positions of their argument."""


class Through(tuple):
    """Where a loop reads an array through windows and gathers: ``chain`` (the ``AffineRead``
    and ``Take`` nodes, outermost first) applied to the loop variables ``at`` (of the first
    one's axes). As a tuple it is ``at``, so loop-order heuristics count its variables; it
    equals only itself, so the planner never takes it for a read at the array's own index
    (the array is read whole: it must be complete before the loop, never a temporary)."""

    chain: tuple
    at: tuple

    def __new__(cls, chain: tuple, at: tuple) -> Through:
        self = super().__new__(cls, tuple(at))
        self.chain = tuple(chain)
        self.at = tuple(at)
        return self

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __reduce__(self):
        return (Through, (self.chain, self.at))


def _inner(node: ir.Node) -> ir.Node:
    return node.arg if isinstance(node, ir.AffineRead) else node.table


def through(reads: list[tuple[ir.Node, tuple]]) -> list[tuple[ir.Node, tuple]]:
    """``reads`` with every read of a window or gather replaced by a read of the array under
    it (at a ``Through`` position)."""
    out = []
    for op, at in reads:
        while isinstance(op, INLINE_READS):
            chain, base = (at.chain, at.at) if isinstance(at, Through) else ((), at)
            op, at = _inner(op), Through(chain + (op,), base)
        out.append((op, at))
    return out


def _own_through(node: ir.AffineRead | ir.Take, loop_vars) -> list[tuple[ir.Node, tuple]]:
    """A window or gather computed into its own array reads its argument through itself."""
    return through([(node, tuple(loop_vars))])


def _take_reads(node: ir.Take, loop_vars) -> list[tuple[ir.Node, tuple]]:
    return [*_own_through(node, loop_vars),
            (node.indices, tuple(loop_vars)[:node.indices.rank])]


_POINTWISE.register(ir.AffineRead, ir.Take, ir.Max, ir.ArgMaxMask)(lambda node: True)
_POINTWISE.register(ir.AffineScatter, ir.TakeAdjoint)(lambda node: False)
_ROW_STATS.register(ir.Max, ir.ArgMaxMask)(lambda node: (node.arg, node.axis))
_ROW_STATS.register(ir.AffineRead, ir.AffineScatter, ir.Take, ir.TakeAdjoint)(
    lambda node: None)
_OPERAND_READS.register(ir.AffineRead)(_own_through)
_OPERAND_READS.register(ir.Take)(_take_reads)
# The maxima are read from their step's arrays; scatters are steps of their own.
_OPERAND_READS.register(ir.Max, ir.ArgMaxMask, ir.AffineScatter, ir.TakeAdjoint)(
    lambda node, loop_vars: [])
_OWN_LOOP_VARS.register(ir.AffineRead, ir.AffineScatter, ir.Take, ir.TakeAdjoint, ir.Max,
                        ir.ArgMaxMask)(lambda node: iteration(node)[1])
_LOOP_COST.register(ir.AffineRead, ir.Take)(lambda node: 2 + 2 * len(node.children()))
_LOOP_COST.register(ir.Max, ir.ArgMaxMask)(lambda node: 2)
_LOOP_COST.register(ir.AffineScatter, ir.TakeAdjoint)(lambda node: 4)
_ENTRY_FLOPS.register(ir.AffineRead, ir.Take, ir.Max, ir.ArgMaxMask)(
    lambda node, reduction: 1)
_ENTRY_FLOPS.register(ir.AffineScatter, ir.TakeAdjoint)(_never("a loop member"))


def row_stats_kind(node: ir.Node) -> str:
    """Which row statistics a node reads: ``"max"`` (maxima and first arg maxima, for
    ``Max`` and ``ArgMaxMask``) or ``"exp"`` (maxima and sums of exponentials)."""
    return "max" if isinstance(node, (ir.Max, ir.ArgMaxMask)) else "exp"



# A recurrence is a step of its own (``steps.ScanStep``), never a loop member.
_POINTWISE.register(ir.Scan)(lambda node: False)
_ROW_STATS.register(ir.Scan)(lambda node: None)
_OPERAND_READS.register(ir.Scan)(lambda node, loop_vars: [])
_OWN_LOOP_VARS.register(ir.Scan)(lambda node: iteration(node)[1])
_LOOP_COST.register(ir.Scan)(lambda node: 1 + len(node.children()))
_ENTRY_FLOPS.register(ir.Scan)(_never("a loop member"))
