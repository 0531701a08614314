"""Steps of computed positions (``symdl.ir.indexed``): scatters and maxima, each a loop of
its own, and products of a window with a tensor as im2col + BLAS (col2im for their
scatters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import sympy as sp

from symdl import ir
from symdl.kernels.loops import (
    iteration,
    node_reads,
    through,
)
from symdl.kernels.steps.base import Read, Step, dispatch, jit_decorator, stats_key
from symdl.kernels.steps.dense import LoopGroup

if TYPE_CHECKING:
    from symdl.kernels.codegen import Generator


# ---------------------------------------------------------------------------------------------
# Computed positions (symdl.ir.indexed): scatters and maxima, each a loop of its own.


def _plain_space(node: ir.Node) -> tuple[tuple, tuple]:
    """(loop dims, loop variable of each axis) for a loop over the entries of ``node``."""
    dims, axis_vars, k = [], [], 0
    for d in node.shape:
        if d == 1:
            axis_vars.append(None)
        else:
            dims.append(d)
            axis_vars.append(k)
            k += 1
    return tuple(dims), tuple(axis_vars)


@dataclass(eq=False)
class ScatterLoop(Step):
    """A scatter (``AffineScatter``: col2im, a transposed convolution, a reshape) or a
    scatter-add of rows (``TakeAdjoint``, an embedding's gradient): one loop over the index
    space of the argument that adds each entry at its position (dropped outside). When the
    argument is a product read by the scatter alone (``fused``: the ``δ W`` of a
    convolution's ``∂L/∂X``), the loop runs over the product's labels, summed ones included,
    and accumulates the products directly: the product is never stored. The loop is parallel
    over a variable that some axis of the result is exactly (the batch: distinct iterations
    then write distinct entries), else serial."""

    node: ir.Node
    fused: ir.Einsum | None = None
    loop_dims: tuple = ()
    arg_vars: tuple = ()
    value_reads: list = field(default_factory=list)
    by_index: IndexScatter | None = None
    """Where the product holds the one-hot masks of a maximum's first arg max (max pooling's
    derivative): the loop runs over the window's rows only and adds each entry at the
    position its maximum's pass stored (``RowMax``), with no mask."""

    summary: ClassVar[str] = "scatter loops"

    def __post_init__(self) -> None:
        if self.fused is not None:
            self.loop_dims, self.arg_vars = iteration(self.fused)
            self.value_reads = node_reads(self.fused)
            self.by_index = index_scatter(self.value_reads)
        else:
            self.loop_dims, self.arg_vars = _plain_space(self.node.arg)
            self.value_reads = through([(self.node.arg, self.arg_vars)])

    def _value_reads(self) -> list[Read]:
        """The factors the loop reads (a maximum's masks are not read: ``by_index``)."""
        if self.by_index is None:
            return self.value_reads
        return [(op, at) for op, at in self.value_reads
                if not any(op is m for m in self.by_index.masks)]

    def reads(self) -> list[Read]:
        reads = list(self._value_reads())
        if isinstance(self.node, ir.TakeAdjoint):
            reads.append((self.node.indices, self.arg_vars[:self.node.indices.rank]))
        return reads

    def needs(self) -> set:
        needs = super().needs()
        if self.by_index is not None:
            top = self.by_index.masks[0]
            needs.add(stats_key(top.arg, top.axis, "max"))
        return needs

    def provides(self) -> set:
        return {id(self.node)}

    def computed(self) -> list[ir.Node]:
        return [self.node]

    def flops(self) -> sp.Expr:
        return (len(self.value_reads) + 1) * sp.Mul(*self.loop_dims)

    def parallel_var(self) -> int | None:
        """A loop variable that is exactly one axis of the result and enters no other."""
        node = self.node
        if isinstance(node, ir.TakeAdjoint):
            trailing = self.arg_vars[node.indices.rank:]
            return next((v for v in trailing if v is not None), None)
        owned = [a for a in owning_axes(node) if self.arg_vars[a] is not None
                 and (self.by_index is None or self.arg_vars[a] not in self.by_index.vars)]
        return self.arg_vars[owned[0]] if owned else None

    def emit(self, gen: Generator, number: int) -> list[str]:
        """BLAS then col2im where the scattered product is a matrix product per batch entry
        (``scatter_gemm``), else one loop that computes and scatters each entry."""
        gemm = scatter_gemm(self.node, self.fused)
        if gemm is not None:
            return _emit_scatter_gemm(self, gemm, gen, number)
        node = self.node
        loop_vars = [f"i{k}" for k in range(len(self.loop_dims))]
        loop = gen.new_loop(LoopGroup(self.loop_dims), loop_vars)
        factors = [gen.read_tracked(op, at, loop) for op, at in self._value_reads()]
        if self.fused is not None and self.fused.coeff != 1:
            factors.insert(0, gen.constant(self.fused.coeff))
        value = " * ".join(factors) or "1.0"
        names = [loop_vars[v] if v is not None else "0" for v in self.arg_vars]
        out = gen.array_of(node)
        loop.arrays.add(out)
        par = self.parallel_var()
        conds: list[str] = []
        if isinstance(node, ir.TakeAdjoint):
            s = node.indices.rank
            idx = gen.array_of(node.indices)
            loop.arrays.add(idx)
            positions = [f"{idx}[{', '.join(names[:s])}]", *names[s:]]
        else:
            positions = []
            for j, m in enumerate(node.index):
                pos = gen.affine_text(m, names)
                bound = sp.sympify(node.dims[j])
                if not inside_by_range(m, node.arg.shape, bound):
                    conds.append(f"0 <= {pos} < {gen.size(bound)}")
                positions.append(pos)
        target = f"{out}[{', '.join(positions) or '0'}]"
        body = [f"v = {value}"]
        window: list[int] = []
        if self.by_index is not None:  # the window's position from the stored arg max
            window = list(self.by_index.vars)
            body = [*self.by_index.decode(gen, loop), *body]
        if conds:
            body += [f"if {' and '.join(conds)}:", f"    {target} += v"]
        else:
            body.append(f"{target} += v")
        header = ", ".join(sorted(loop.arrays) + [gen.dim_names[d] for d in gen.dims])
        text = []
        for variant, parallel in (("", False), ("_parallel", True)):
            if parallel and par is None:
                continue
            # In parallel, the variable that owns distinct entries outermost (no races).
            order = [v for v in range(len(self.loop_dims)) if v not in window]
            if parallel:
                order = [par] + [v for v in order if v != par]
            lines = [jit_decorator(parallel), f"def _scatter{number}{variant}({header}):",
                     f"    {gen.element_type([out])}", f"    {out}[...] = 0.0",
                     *(f"    {s}" for s in loop.before)]
            indent = "    "
            for k, v in enumerate(order):
                kind = "prange" if parallel and k == 0 else "range"
                lines.append(f"{indent}for i{v} in {kind}(int({gen.size(self.loop_dims[v])})):")
                indent += "    "
            lines += [f"{indent}{s}" for s in body]
            text.append("\n".join([*lines, ""]))
        gen.functions.append("\n\n".join(text))
        return dispatch(f"_scatter{number}", header, parallel=par is not None)


@dataclass
class IndexScatter:
    """The masks of a maximum's first arg max among a scattered product's factors: ``masks``
    from the outermost (``ArgMaxMask(Max(R, 5), 4)``) in, one per axis of the window
    (``max_chain``); ``vars`` the loop variable of each of those axes; ``row`` the outermost
    mask's read with those axes out (its row in the stored maxima)."""

    masks: tuple
    vars: tuple
    row: tuple

    def decode(self, gen: Generator, loop) -> list[str]:
        """Lines that set the window's loop variables from the stored flat first arg max."""
        top = self.masks[0]
        _, first, divisor = gen.stats[("max", id(top.arg), top.axis)]
        loop.arrays.add(first)
        base, axes = max_chain(top.arg, top.axis)
        row = ", ".join(loop.loop_vars[v] if v is not None else "0" for v in self.row)
        lines = [f"a = {first}[{row or '0'}]"]
        for k, v in enumerate(self.vars):
            divisor = chain_divisor(gen, base, axes, k)
            position = "a" if divisor == "1" else f"(a // ({divisor}))"
            if k:  # below the outermost axis: the remainder
                position = f"{position} % int({gen.size(base.shape[axes[k]])})"
            lines.append(f"{loop.loop_vars[v]} = {position}")
        return lines


def index_scatter(reads: list[Read]) -> IndexScatter | None:
    """The ``IndexScatter`` of a scattered product's reads: when its one-hot masks
    (``ArgMaxMask``) are those of one maximum over a window, every level of it, read at the
    same row, each along its own loop variable; else None (the loop multiplies by them)."""
    masks = [(op, at) for op, at in reads if isinstance(op, ir.ArgMaxMask)]
    for top, top_at in masks:
        chain, arg = [(top, top_at)], top.arg
        while isinstance(arg, ir.Max):
            inner = next(((m, at) for m, at in masks
                          if m.arg is arg.arg and m.axis == arg.axis), None)
            if inner is None:
                break
            chain.append(inner)
            arg = arg.arg
        if isinstance(arg, ir.Max) or len(chain) != len(masks):
            continue
        axes = [m.axis for m, _ in chain]
        window = [at[m.axis] for m, at in chain]
        if None in window or len(set(window)) != len(window):
            continue
        row = tuple(None if k in axes else v for k, v in enumerate(top_at))
        # Every mask at the same row and, along the outer axes it still has, at their
        # variables: the product of the masks is 1 at the stored position only.
        if any(v in window for v in row) or not all(
                at[k] == (window[axes.index(k)] if k in axes[:j] else row[k])
                for j, (_, at) in enumerate(chain) for k in range(len(at))
                if k not in axes[j:]):
            continue
        return IndexScatter(tuple(m for m, _ in chain), tuple(window), row)
    return None


def inside_by_range(m, arg_shape, bound: sp.Expr) -> bool:
    """Whether ``m`` stays in ``0 .. bound - 1`` over the argument's index space (a reshape,
    a window with no padding): the bounds check is then left out. False when unsure."""
    low = high = sp.sympify(m.offset)
    for c, d in zip(m.coeffs, arg_shape, strict=True):
        span = sp.sympify(c) * (sp.sympify(d) - 1)
        if span.is_nonnegative:
            high += span
        elif span.is_nonpositive:
            low += span
        else:
            return False
    try:
        return bool(sp.simplify(low).is_nonnegative) and bool(
            sp.simplify(bound - 1 - high).is_nonnegative)
    except TypeError:
        return False


def max_chain(arg: ir.Node, axis: int) -> tuple[ir.Node, tuple[int, ...]]:
    """``(base, axes)`` for the maximum of ``arg`` along ``axis`` where ``arg`` is itself a
    maximum (``Max(Max(R, 5), 4)``: a pooling window's rows, then its columns): the maximum
    over all of ``axes`` (outermost first) of ``base``, the first tensor that is no maximum.
    Along one axis, ``(arg, (axis,))``."""
    axes = [axis]
    while isinstance(arg, ir.Max):
        axes.append(arg.axis)
        arg = arg.arg
    return arg, tuple(axes)


def chain_divisor(gen: Generator, base: ir.Node, axes: tuple[int, ...], level: int) -> str:
    """The divisor that takes the flat first arg max over ``axes`` (row-major, the outermost
    axis first) to the position along ``axes[level]``: the product of the inner sizes."""
    return gen.size(sp.Mul(*(base.shape[a] for a in axes[level + 1:])))


@dataclass(eq=False)
class RowMax(Step):
    """The maximum of ``arg`` along ``axis`` and the position of its first maximum, for each
    entry of the other axes: one pass, NaN as ``numpy.max`` (a NaN is the maximum, the first
    NaN its position). ``Max`` and ``ArgMaxMask`` read the two arrays. Where ``arg`` is itself
    a maximum along other axes (a pooling window: ``max_chain``), the pass runs over the whole
    window of the tensor underneath, and the position is the flat index of the first maximum
    in row-major order (the outermost axis first): the same first arg max as the maxima
    one axis after the other, with no intermediate array. ``arg`` is read where it lies (a
    pooling window is read through, never stored)."""

    arg: ir.Node
    axis: int
    loop_dims: tuple = ()
    arg_vars: tuple = ()
    value_reads: list = field(default_factory=list)
    base: ir.Node | None = None
    axes: tuple = ()

    summary: ClassVar[str] = "max row passes"

    def __post_init__(self) -> None:
        self.base, self.axes = max_chain(self.arg, self.axis)
        self.loop_dims, self.arg_vars = _plain_space(self.base)
        self.value_reads = through([(self.base, self.arg_vars)])

    def reads(self) -> list[Read]:
        return list(self.value_reads)

    def provides(self) -> set:
        return {stats_key(self.arg, self.axis, "max")}

    def flops(self) -> sp.Expr:
        return 2 * sp.Mul(*self.base.shape)

    def emit(self, gen: Generator, number: int) -> list[str]:
        peak, first = f"peak{number}", f"first{number}"
        gen.stats[("max", id(self.arg), self.axis)] = (
            peak, first, chain_divisor(gen, self.base, self.axes, 0))
        loop_vars = [f"i{k}" for k in range(len(self.loop_dims))]
        loop = gen.new_loop(LoopGroup(self.loop_dims), loop_vars)
        ((op, at),) = self.value_reads
        value = gen.read_tracked(op, at, loop)
        loop.arrays.update((peak, first))
        along = [self.arg_vars[a] for a in self.axes if self.arg_vars[a] is not None]
        kept = [loop_vars[v] if v is not None and k not in self.axes else "0"
                for k, v in enumerate(self.arg_vars)]
        where = ", ".join(kept) or "0"
        outer = [v for v in range(len(self.loop_dims)) if v not in along]
        header = ", ".join(sorted(loop.arrays) + [gen.dim_names[d] for d in gen.dims])
        # The flat position of the window entry: row-major over the axes, outermost first.
        flat = " + ".join(
            f"i{self.arg_vars[a]}" + (f" * int({chain_divisor(gen, self.base, self.axes, k)})"
                                      if k < len(self.axes) - 1 else "")
            for k, a in enumerate(self.axes) if self.arg_vars[a] is not None) or "0"
        # A window read in place (pooling): the last of the other axes (the channels, or the
        # output columns) innermost, under the window's loops, so that the comparisons run
        # along it as vector selects into the stored maxima, not one window at a time.
        lanes = (outer[-1] if outer and along and isinstance(self.base, ir.AffineRead)
                 else None)
        text = []
        for variant, parallel in (("", False), ("_parallel", True)):
            if parallel and (not outer or (lanes is not None and len(outer) < 2)):
                continue
            lines = [jit_decorator(parallel), f"def _rowmax{number}{variant}({header}):",
                     *(f"    {s}" for s in loop.before)]
            if lanes is not None:
                lines += self._lanes_code(gen, outer, along, lanes, value, flat, peak, first,
                                          where, parallel)
                text.append("\n".join([*lines, ""]))
                continue
            indent = "    "
            for k, v in enumerate(outer):
                kind = "prange" if parallel and k == 0 else "range"
                lines.append(f"{indent}for i{v} in {kind}(int({gen.size(self.loop_dims[v])})):")
                indent += "    "
            scan, inner = [], ""
            for v in along:
                # The first entry is compared with itself too (one pass, no special case).
                scan.append(f"{inner}for i{v} in range(int({gen.size(self.loop_dims[v])})):")
                inner += "    "
            scan += [f"{inner}v = {value}",
                     # Strictly larger: the first maximum wins ties; a NaN beats any number
                     # and then stays (numpy.max, numpy.argmax).
                     f"{inner}if v > m or (v != v and m == m):",
                     f"{inner}    m = v",
                     f"{inner}    a = {flat}"] if along else []
            lines += [f"{indent}{s}" for s in
                      [*(f"i{v} = 0" for v in along), f"m = {value}", "a = 0", *scan,
                       f"{peak}[{where}] = m", f"{first}[{where}] = a"]]
            text.append("\n".join([*lines, ""]))
        gen.functions.append("\n\n".join(text))
        return self._allocate_and_call(gen, number, peak, first, header, bool(outer))

    def _lanes_code(self, gen: Generator, outer: list, along: list, lanes: int, value: str,
                    flat: str, peak: str, first: str, where: str, parallel: bool) -> list[str]:
        """The loops of a window's maximum with the axis ``lanes`` innermost: the maxima of a
        row of windows start at the windows' first entries, then each window position
        updates them all (strictly larger, or a first NaN: as the one-window scan). The
        positions are kept in a row of the element type (exact: a window has far fewer than
        2^24 entries) and updated by arithmetic, not by a branch: Numba writes ``x if c else
        y`` as a branch, which random data mispredicts half the time (3.5x slower)."""
        size = f"int({gen.size(self.loop_dims[lanes])})"
        lines, indent = ["    _F = " + peak + ".dtype.type"], "    "
        if len(outer) == 1:
            lines.append(f"    lane = np.empty({size}, {peak}.dtype)")
        for k, v in enumerate(outer[:-1]):
            kind = "prange" if parallel and k == 0 else "range"
            lines.append(f"{indent}for i{v} in {kind}(int({gen.size(self.loop_dims[v])})):")
            indent += "    "
            if k == 0:  # one row of positions per outermost iteration (a thread's own)
                lines.append(f"{indent}lane = np.empty({size}, {peak}.dtype)")
        lane = f"for i{lanes} in range({size}):"
        lines += [f"{indent}{lane}", *(f"{indent}    i{v} = 0" for v in along),
                  f"{indent}    {peak}[{where}] = {value}", f"{indent}    lane[i{lanes}] = 0"]
        inner = indent
        for v in along:
            lines.append(f"{inner}for i{v} in range(int({gen.size(self.loop_dims[v])})):")
            inner += "    "
        lines += [f"{inner}{s}" for s in [
            lane, "    v = " + value, f"    m = {peak}[{where}]",
            "    c = (v > m) | ((v != v) & (m == m))",
            f"    {peak}[{where}] = v if c else m",
            # c: the new position, else the kept one (both >= 0).
            "    w = _F(c)",
            f"    lane[i{lanes}] = max(lane[i{lanes}] * (_F(1) - w), _F({flat}) * w)"]]
        return lines + [f"{indent}{lane}", f"{indent}    {first}[{where}] = int(lane[i{lanes}])"]

    def _allocate_and_call(self, gen: Generator, number: int, peak: str, first: str,
                           header: str, parallel: bool) -> list[str]:
        shape = [1 if k in self.axes else d for k, d in enumerate(self.base.shape)]
        sizes = "(" + ", ".join(f"int({gen.size(d)})" for d in shape) + ",)"
        return [f"{peak} = np.empty({sizes}, dtype=dtype)",
                f"{first} = np.empty({sizes}, dtype=np.int64)",
                *dispatch(f"_rowmax{number}", header, parallel=parallel)]


@dataclass(eq=False)
class WindowProduct(Step):
    """A product of a window (an ``AffineRead``) with another tensor as matrix products
    (im2col): for each entry ``b`` of the batch label (the window's first axis), the window's
    entries are packed into a buffer of one batch entry, ``(summed, free)`` or ``(free,
    summed)`` as the product needs, and BLAS multiplies it with the other operand. A
    convolution's value (``Y[b] = W · cols(X[b])``) and its kernel's gradient
    (``∂L/∂W = Σ_b G[b] · cols(X[b])^T``) take this form; the buffer holds one batch entry's
    windows (``summed x free`` entries), never the whole batch's."""

    node: ir.Einsum
    window: ir.AffineRead
    other: ir.Node
    batch: int | None
    """The batch label, or None (one product)."""
    summed: tuple
    free_window: tuple
    free_other: tuple
    other_first: bool
    """Whether the other operand's axes (past the batch) are (free, summed), else (summed,
    free)."""
    out_other_first: bool
    """Whether the result's axes (past the batch) are (the other's free, the window's free)."""
    accumulate: bool
    """The batch label is summed (a kernel gradient): the products of the entries add up."""

    summary: ClassVar[str] = "im2col products"

    def _window_spec(self) -> tuple:
        return self.node.specs[self.node.operands.index(self.window)]

    def _reads(self) -> list[Read]:
        spec = self._window_spec()
        order = [lab for lab in spec if lab != self.batch]
        labels = {lab: k + 1 for k, lab in enumerate(order)}
        labels[self.batch] = 0
        return through([(self.window, tuple(labels[lab] for lab in spec))])

    def reads(self) -> list[Read]:
        return [(self.other, None), *self._reads()]

    def provides(self) -> set:
        return {id(self.node)}

    def computed(self) -> list[ir.Node]:
        return [self.node]

    def flops(self) -> sp.Expr:
        dims = self.node.label_dims()
        return 2 * sp.Mul(*(dims[lab] for lab in dims))

    def emit(self, gen: Generator, number: int) -> list[str]:
        node, dims = self.node, self.node.label_dims()
        spec = self._window_spec()
        rest = [lab for lab in spec if lab != self.batch]
        # The pack loop: variable 0 is the batch entry (an argument), 1.. the window's other
        # labels; the buffer's axes in the order the product reads them.
        if self.out_other_first:  # out = other(free, summed) @ buf(summed, free_window)
            buffer_labels = self.summed + self.free_window
        else:  # out = buf(free_window, summed) @ other(summed, free)
            buffer_labels = self.free_window + self.summed
        var_of = {lab: k + 1 for k, lab in enumerate(rest)}
        loop_vars = ["b"] + [f"i{k + 1}" for k in range(len(rest))]
        group_dims = (dims[self.batch] if self.batch is not None else 1,) + tuple(
            dims[lab] for lab in rest)
        loop = gen.new_loop(LoopGroup(group_dims), loop_vars)
        ((op, at),) = self._reads()
        value = gen.read_tracked(op, at, loop)
        buf, packed = f"buf{number}", f"packed{number}"
        header = ", ".join(["b", *sorted(loop.arrays), buf]
                           + [gen.dim_names[d] for d in gen.dims])
        shape = ", ".join(f"int({gen.size(dims[lab])})" for lab in buffer_labels)
        # Serial only (about 2% of the time): the products between the packs run on BLAS's
        # threads, and Numba's parallel regions alternating with them would only contend.
        lines = [jit_decorator(False), f"def _pack{number}({header}):",
                 *(f"    {s}" for s in loop.before), f"    {packed} = {buf}.reshape(({shape},))"]
        indent = "    "
        for lab in buffer_labels:
            lines.append(f"{indent}for i{var_of[lab]} in range(int({gen.size(dims[lab])})):")
            indent += "    "
        where = ", ".join(f"i{var_of[lab]}" for lab in buffer_labels)
        lines.append(f"{indent}{packed}[{where}] = {value}")
        gen.functions.append("\n".join([*lines, ""]))

        def size(labels) -> str:
            return "int(" + (gen.size(sp.Mul(*(dims[lab] for lab in labels)))) + ")"

        s, fw, fo = size(self.summed), size(self.free_window), size(self.free_other)
        other = gen.array_of(self.other)
        out = gen.array_of(node)
        at_b = "[b]" if self.batch is not None and self.accumulate else ""
        matrix = (f"{other}{at_b}.reshape(({fo}, {s}))" if self.other_first
                  else f"{other}{at_b}.reshape(({s}, {fo}))")
        if self.out_other_first:
            left = matrix if self.other_first else f"{matrix}.T"
            right, result = buf, (fo, fw)
        else:
            left, result = buf, (fw, fo)
            right = f"{matrix}.T" if self.other_first else matrix
        rows = (s, fw) if self.out_other_first else (fw, s)
        lines = [f"{buf} = np.empty(({rows[0]}, {rows[1]}), dtype=dtype)"]
        if self.batch is not None and not self.accumulate:
            target = f"{out}[b].reshape(({result[0]}, {result[1]}))"
        elif self.accumulate:
            lines += [f"{out}[...] = 0.0", f"part{number} = np.empty(({result[0]}, "
                      f"{result[1]}), dtype=dtype)",
                      f"total{number} = {out}.reshape(({result[0]}, {result[1]}))"]
            target = f"part{number}"
        else:
            target = f"{out}.reshape(({result[0]}, {result[1]}))"
        batches = f"int({gen.size(dims[self.batch])})" if self.batch is not None else "1"
        call = [f"_pack{number}({header})"]
        body = [*call, f"np.dot({left}, {right}, {target})"]
        if self.accumulate:
            body.append(f"total{number} += part{number}")
        lines += [f"for b in range({batches}):", *(f"    {line}" for line in body)]
        if node.coeff != 1:
            lines.append(f"{out} *= {gen.constant(node.coeff)}")
        return lines


def _which_first(labels, first: tuple, second: tuple) -> bool | None:
    """Whether ``labels`` are ``first + second`` (True) or ``second + first`` (False); None
    when they are neither (no matrix product without a transpose)."""
    if tuple(labels) == first + second:
        return True
    if tuple(labels) == second + first:
        return False
    return None


def window_product(node: ir.Node) -> WindowProduct | None:
    """A product of a window with another tensor in the form ``WindowProduct`` computes (a
    convolution's value or its kernel's gradient), else None (the loops compute it)."""
    if not isinstance(node, ir.Einsum) or len(node.operands) != 2:
        return None
    kinds = [isinstance(op, ir.AffineRead) for op in node.operands]
    if kinds.count(True) != 1:
        return None
    k = kinds.index(True)
    window, other = node.operands[k], node.operands[1 - k]
    ws, os_, out = node.specs[k], node.specs[1 - k], node.out
    if other.rank == 0 or any(len(set(x)) != len(x) for x in (ws, os_, out)):
        return None
    batch, accumulate = ws[0], False
    if batch in out and batch not in os_ and out[0] == batch:
        pass
    elif batch in os_ and batch not in out and os_[0] == batch:
        accumulate = True
    else:
        batch = None
    wr = [lab for lab in ws if lab != batch]
    orest = [lab for lab in os_ if lab != batch]
    outr = [lab for lab in out if lab != batch]
    summed = tuple(lab for lab in orest if lab in wr and lab not in out)
    free_w = tuple(lab for lab in outr if lab in wr)
    free_o = tuple(lab for lab in outr if lab in orest)
    if (not summed or not free_w or not free_o or set(free_w) & set(free_o)
            or set(wr) != set(summed) | set(free_w)
            or set(orest) != set(summed) | set(free_o)):
        return None
    other_first = _which_first(orest, free_o, summed)
    out_other_first = _which_first(outr, free_o, free_w)
    if other_first is None or out_other_first is None:
        return None
    return WindowProduct(node, window, other, batch, summed, free_w, free_o, other_first,
                         out_other_first, accumulate)


@dataclass
class ScatterGemm:
    """How a scatter of a product of two tensors runs as matrix products (col2im): for each
    batch entry ``b``, ``C = A · B[b]`` by BLAS into a buffer (``first`` has no batch label,
    ``second`` has it on its first axis), then a loop adds ``C``'s entries at their
    positions. A convolution's ``∂L/∂X`` (``Wᵀ δ[b]``, scattered): the product of the whole
    batch is never stored."""

    first: ir.Node
    second: ir.Node
    batch: int
    summed: tuple
    free_first: tuple
    free_second: tuple
    first_free_leading: bool
    second_free_leading: bool


def scatter_gemm(node: ir.Node, fused: ir.Einsum | None) -> ScatterGemm | None:
    """The matrix-product form of a scatter of ``fused``, else None (one loop does it all)."""
    if (not isinstance(node, ir.AffineScatter) or fused is None or len(fused.operands) != 2
            or not fused.out):
        return None
    batch = fused.out[0]
    specs = fused.specs
    holders = [k for k in (0, 1) if batch in specs[k]]
    if len(holders) != 1 or specs[holders[0]][0] != batch:
        return None
    k2 = holders[0]
    k1 = 1 - k2
    s1, s2 = tuple(specs[k1]), tuple(lab for lab in specs[k2] if lab != batch)
    if any(len(set(s)) != len(s) for s in (s1, s2, fused.out)):
        return None
    out = [lab for lab in fused.out if lab != batch]
    summed = tuple(lab for lab in s1 if lab in s2 and lab not in fused.out)
    free1 = tuple(lab for lab in s1 if lab in out)
    free2 = tuple(lab for lab in s2 if lab in out)
    if (not summed or not free1 or not free2 or set(free1) & set(free2)
            or set(s1) != set(summed) | set(free1) or set(s2) != set(summed) | set(free2)
            or set(out) != set(free1) | set(free2)):
        return None
    orders = []
    for spec, free in ((s1, free1), (s2, free2)):
        if spec == free + summed:
            orders.append(True)
        elif spec == summed + free:
            orders.append(False)
        else:
            return None
    return ScatterGemm(fused.operands[k1], fused.operands[k2], batch, summed, free1, free2,
                       *orders)


def _emit_scatter_gemm(step: ScatterLoop, gemm: ScatterGemm, gen: Generator,
                       number: int) -> list[str]:
    node, fused = step.node, step.fused
    dims = fused.label_dims()
    labels = (gemm.batch, *gemm.free_first, *gemm.free_second)
    var_of = {lab: k for k, lab in enumerate(labels)}
    loop_vars = ["b"] + [f"i{k}" for k in range(1, len(labels))]
    names = [loop_vars[var_of[lab]] for lab in fused.out]
    buf, out = f"cols{number}", gen.array_of(node)
    arrays = {buf, out}
    conds, positions = [], []
    for j, m in enumerate(node.index):
        pos = gen.affine_text(m, names)
        bound = sp.sympify(node.dims[j])
        if not inside_by_range(m, node.arg.shape, bound):
            conds.append(f"0 <= {pos} < {gen.size(bound)}")
        positions.append(pos)
    header = ", ".join(["b", *sorted(arrays)] + [gen.dim_names[d] for d in gen.dims])
    shape = ", ".join(f"int({gen.size(dims[lab])})" for lab in labels[1:])
    where = ", ".join(loop_vars[1:])
    target = f"{out}[{', '.join(positions)}]"
    body = ([f"if {' and '.join(conds)}:", f"    {target} += c[{where}]"] if conds
            else [f"{target} += c[{where}]"])
    # Serial, as WindowProduct's packing: the products between take the threads.
    lines = [jit_decorator(False), f"def _col2im{number}({header}):",
             f"    c = {buf}.reshape(({shape},))"]
    indent = "    "
    for lab in labels[1:]:
        lines.append(f"{indent}for {loop_vars[var_of[lab]]} in range("
                     f"int({gen.size(dims[lab])})):")
        indent += "    "
    lines += [f"{indent}{s}" for s in body]
    gen.functions.append("\n".join([*lines, ""]))

    def size(labs) -> str:
        return "int(" + gen.size(sp.Mul(*(dims[lab] for lab in labs))) + ")"

    s, f1, f2 = size(gemm.summed), size(gemm.free_first), size(gemm.free_second)
    a = gen.array_of(gemm.first)
    b = gen.array_of(gemm.second)
    left = (f"{a}.reshape(({f1}, {s}))" if gemm.first_free_leading
            else f"{a}.reshape(({s}, {f1})).T")
    right = (f"{b}[b].reshape(({f2}, {s})).T" if gemm.second_free_leading
             else f"{b}[b].reshape(({s}, {f2}))")
    lines = [f"{buf} = np.empty(({f1}, {f2}), dtype=dtype)", f"{out}[...] = 0.0",
             f"for b in range(int({gen.size(dims[gemm.batch])})):",
             f"    np.dot({left}, {right}, {buf})"]
    if fused.coeff != 1:
        lines.append(f"    {buf} *= {gen.constant(fused.coeff)}")
    lines.append(f"    _col2im{number}({header})")
    return lines


def owning_axes(node: ir.AffineScatter) -> list[int]:
    """The axes of a scatter's argument that are exactly one axis of the result and enter no
    other position: entries that differ there land in different entries (no races)."""
    owned = []
    for j, m in enumerate(node.index):
        used = [k for k, c in enumerate(m.coeffs) if c != 0]
        if (len(used) != 1 or m.coeffs[used[0]] != 1 or m.offset != 0
                or sp.sympify(node.arg.shape[used[0]]) != sp.sympify(node.dims[j])):
            continue
        a = used[0]
        if all(other.coeffs[a] == 0 for i, other in enumerate(node.index) if i != j):
            owned.append(a)
    return owned
