"""Contractions of tensors of any rank as matrix products (BLAS): ``BatchedContraction``.

A product of two tensors ``Σ_K A[..] B[..]`` whose labels fall into four groups, the batch
labels (in both operands and the result), the rows (in the first operand and the result), the
columns (in the second operand and the result) and the summed labels (in both operands, not
in the result), is a matrix product per value of the batch labels:
``out[β] (rows x cols) = A[β] (rows x summed) @ B[β] (summed x cols)``. Each operand and the
result is viewed as a stack of matrices (a C-order reshape, no copy) when its axes are the
batch labels followed by its two groups, in either order (the other order is a transposed
view, which BLAS reads as such); otherwise its axes are permuted into that order by one copy
(linear in its size, against the product's work, which is the size times the summed length).
So the projections ``X[b,t,w] W[w,h,d]`` of attention are one GEMM of ``(b·t) x w`` by
``w x (h·d)``, and its scores ``Q[b,h,i,d] K[b,h,j,d]`` a loop over ``(b,h)`` of GEMMs.

The products run in the driver, through NumPy's ``np.dot`` (its BLAS, in the arrays' own
precision, on BLAS's threads), as the rank-2 products do (``dense.Contraction``).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import sympy as sp

from symdl import ir
from symdl.kernels.loops import INLINE_READS, is_value
from symdl.kernels.steps.base import Read, Step

if TYPE_CHECKING:
    from symdl.kernels.codegen import Generator


@dataclass(eq=False)
class BatchedContraction(Step):
    """``out[batch, rows, cols] = Σ_summed A[batch, rows, summed] B[batch, summed, cols]``,
    each label group in a fixed order; the arrays' own axes may hold the groups in another
    order (see ``layout``)."""

    node: ir.Einsum
    batch: tuple
    rows: tuple
    summed: tuple
    cols: tuple

    summary: ClassVar[str] = "batched BLAS products"
    jitted: ClassVar[bool] = False

    def reads(self) -> list[Read]:
        return [(op, None) for op in self.node.operands]

    def provides(self) -> set:
        return {id(self.node)}

    def computed(self) -> list[ir.Node]:
        return [self.node]

    def flops(self) -> sp.Expr:
        dims = self.node.label_dims()
        labels = self.batch + self.rows + self.summed + self.cols
        return 2 * sp.Mul(*(dims[lab] for lab in labels))

    def groups(self) -> tuple[tuple, tuple, tuple]:
        """The (first, second) label groups of the first operand, the second and the result."""
        return ((self.rows, self.summed), (self.summed, self.cols), (self.rows, self.cols))

    def copies(self) -> list[bool]:
        """For the first operand, the second and the result: whether it is copied (permuted)
        rather than viewed as a stack of matrices."""
        specs = (*self.node.specs, self.node.out)
        dims = self.node.label_dims()
        return [layout(_big(spec, dims), self.batch, *g) is None
                for spec, g in zip(specs, self.groups(), strict=True)]

    def emit(self, gen: Generator, number: int) -> list[str]:
        node = self.node
        dims = node.label_dims()

        def size(labels: tuple) -> str:
            if not labels:
                return "1"
            return "int(" + gen.size(sp.Mul(*(dims[lab] for lab in labels))) + ")"

        batch, rows, summed, cols = (size(g) for g in (self.batch, self.rows, self.summed,
                                                       self.cols))
        sizes = {self.rows: rows, self.summed: summed, self.cols: cols}
        lines: list[str] = []
        stacked = bool(self.batch)
        at = "[i]" if stacked else ""
        names = []
        for k, (op, spec, (first, second)) in enumerate(zip(
                node.operands, node.specs, self.groups()[:2], strict=True)):
            name = f"{'lhs' if k == 0 else 'rhs'}{number}"
            view, swap = _matrices(gen, gen.array_of(op), spec, dims, self.batch, first,
                                   second, batch, sizes, name)
            lines.append(f"{name} = {view}")
            names.append(f"{name}{at}" + (".T" if swap else ""))
        left, right = names
        out = gen.array_of(node)
        out_big = _big(node.out, dims)
        fits = layout(out_big, self.batch, self.rows, self.cols)
        result = f"res{number}"
        permuted = fits is None
        if permuted:
            # Computed as a stack of matrices, then permuted into place: (cols, rows) when the
            # result's last axis is a row label, so that the copy reads and writes that axis
            # contiguously.
            fits = out_big[-1] not in self.rows
        first, second = (rows, cols) if fits else (cols, rows)
        shape = ", ".join((batch, first, second) if stacked else (first, second))
        if permuted:
            lines.append(f"{result} = np.empty(({shape}), dtype=dtype)")
        else:
            lines.append(f"{result} = {out}.reshape(({shape}))")
        if fits is False:  # out^T = B^T A^T: the result's axes are (cols, rows)
            product = f"np.dot({_flip(right)}, {_flip(left)}, {result}{at})"
        else:
            product = f"np.dot({left}, {right}, {result}{at})"
        if stacked:
            lines += [f"for i in range({batch}):", f"    {product}"]
        else:
            lines.append(product)
        if node.coeff != 1:
            lines.append(f"{result} *= {gen.constant(node.coeff)}")
        if permuted:
            order = self.batch + (self.rows + self.cols if fits else self.cols + self.rows)
            full = ", ".join(f"int({gen.size(dims[lab])})" for lab in order)
            perm = ", ".join(str(order.index(lab)) for lab in out_big)
            # The result's array is C-contiguous (an output or the driver's own): a reshape
            # is a view that writes through.
            target = _squeezed(out, node.out, dims, gen) if len(out_big) != len(node.out) else out
            lines.append(f"{target}[...] = {result}.reshape(({full},)).transpose(({perm},))")
        return lines


def _big(spec: tuple, dims: dict) -> tuple:
    """The labels of ``spec`` whose size is not 1 (axes of size 1 are reshaped away)."""
    return tuple(lab for lab in spec if dims[lab] != 1)


def layout(spec: tuple, batch: tuple, first: tuple, second: tuple) -> bool | None:
    """True when the axes ``spec`` are ``batch + first + second`` (a stack of matrices),
    False when they are ``batch + second + first`` (a stack of transposed matrices), None
    when neither (the array must be permuted)."""
    if spec == batch + first + second:
        return True
    if spec == batch + second + first:
        return False
    return None


def _squeezed(array: str, spec: tuple, dims: dict, gen: Generator) -> str:
    """``array`` without its axes of size 1 (a reshape of a C-contiguous array: a view)."""
    sizes = [f"int({gen.size(dims[lab])})" for lab in spec if dims[lab] != 1]
    return f"{array}.reshape(({', '.join(sizes)},))"


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per generated module (its ``Generator``): the permuted copies the driver already made,
``(array, axes, shape) -> the variable holding it``. The gradients of a product often read
one array permuted the same way (``dQ`` as ``(h, e, b, s)`` for both ``dX`` and ``dWq``):
it is copied once. The driver runs its steps in order and never writes an array a later
step reads, so a copy stays valid."""


def _matrices(gen: Generator, array: str, spec: tuple, dims: dict, batch: tuple, first: tuple,
              second: tuple, batch_size: str, sizes: dict, name: str) -> tuple[str, bool]:
    """An expression for ``array`` as a stack of ``first x second`` matrices (or one matrix
    when there is no batch label), and whether it holds them transposed. ``name`` is the
    variable that will hold it (remembered when it is a copy)."""
    big = _big(spec, dims)
    fits = layout(big, batch, first, second)
    lead = [batch_size] if batch else []
    if fits is not None:
        one, two = (first, second) if fits else (second, first)
        shape = ", ".join([*lead, sizes[one], sizes[two]])
        return f"np.ascontiguousarray({array}).reshape(({shape}))", not fits
    # One copy into (batch, first, second) order, or (batch, second, first) when the array's
    # last axis is in ``first``: the copy then runs along that axis on both sides.
    swap = big[-1] in first
    one, two = (second, first) if swap else (first, second)
    perm = ", ".join(str(big.index(lab)) for lab in batch + one + two)
    shape = ", ".join([*lead, sizes[one], sizes[two]])
    copies = _COPIES.setdefault(gen, {})
    key = (array, perm, shape)
    if key in copies:
        return copies[key], swap
    copies[key] = name
    source = f"np.ascontiguousarray({array})"
    if len(big) != len(spec):
        source = _squeezed(source, spec, dims, gen)
    return (f"np.ascontiguousarray({source}.transpose(({perm},))).reshape(({shape}))",
            swap)


def _flip(operand: str) -> str:
    return operand[:-2] if operand.endswith(".T") else operand + ".T"


def batched_contraction(node: ir.Node) -> BatchedContraction | None:
    """The product ``node`` as matrix products when it is one (see the module's docstring):
    two array operands, no label repeated within an operand or the result, no label summed
    over one operand alone, and at least one row, one column and one summed label (of size
    other than 1). A window or a gather is never an operand (it is read through by loops;
    stored whole, it would be many times its input). Else None: the loops compute it."""
    if not isinstance(node, ir.Einsum) or len(node.operands) != 2:
        return None
    for op in node.operands:
        if isinstance(op, INLINE_READS) or (is_value(op) and not isinstance(op, ir.Leaf)):
            return None
    if any(len(set(spec)) != len(spec) for spec in (*node.specs, node.out)):
        return None
    dims = node.label_dims()
    a, b = (set(_big(spec, dims)) for spec in node.specs)
    out = set(_big(node.out, dims))
    if (a | b) - out - (a & b):  # summed over one operand alone
        return None
    batch, rows, cols, summed = a & b & out, (a & out) - b, (b & out) - a, (a & b) - out
    if not (rows and cols and summed):
        return None
    return _cheapest_orders(node, dims, batch, rows, summed, cols)


def _cheapest_orders(node: ir.Einsum, dims: dict, batch: set, rows: set, summed: set,
                     cols: set) -> BatchedContraction:
    """The order of each label group (one some array already has) that copies least: each
    array that does not fit costs 1000 per axis (a dimension counts as large, as in the
    plan's contraction order)."""
    specs = [_big(spec, dims) for spec in (*node.specs, node.out)]

    def orders(group: set, holders: list[int]) -> list[tuple]:
        found = [tuple(lab for lab in specs[k] if lab in group) for k in holders]
        return list(dict.fromkeys(found))

    best = None
    for order in itertools.product(orders(batch, [2, 0, 1]), orders(rows, [0, 2]),
                                   orders(summed, [0, 1]), orders(cols, [1, 2])):
        step = BatchedContraction(node, *order)
        cost = sum(1000 ** len(spec)
                   for spec, copied in zip(specs, step.copies(), strict=True) if copied)
        if best is None or cost < best[0]:
            best = (cost, step)
    return best[1]
