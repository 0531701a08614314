"""The steps of a kernel plan. Each kind of step knows what it reads, what it computes, its
operation count and the code it becomes:

* ``Contraction``: a matrix product ``A^T B`` and its kin, given to NumPy's BLAS;
* ``LinearSolve``: ``A^{-1} B`` by LU factorisation (LAPACK);
* ``Determinant``: ``det A`` or ``log |det A|`` by LU, or Cholesky for a declared SPD ``A``;
* ``RowStats``: the row (or column) maximum and sum of exponentials that ``softmax`` and
  ``logsumexp`` need, in one pass per row with a max shift;
* ``LoopGroup``: one fused loop nest over an iteration space, computing every elementwise node
  and every reduction over that space as scalar temporaries;
* ``RowStream``: ``X v``, a loop over X's rows and ``X^T r`` in one pass over the rows.

``emit(gen, number)`` returns the driver's lines for the step and adds its jitted functions
to ``gen.functions``; ``gen`` is the module's ``codegen.Generator`` (naming and reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import sympy as sp

from symdl import ir
from symdl.errors import UnsupportedError
from symdl.ir.evaluate import GRAM_PIVOT_TOLERANCE
from symdl.ir.matrix_functions import SOURCE as MATRIX_FUNCTION_SOURCE
from symdl.kernels.loops import (
    entry_flops,
    iteration,
    node_reads,
    row_stats_kind,
    row_stats_of,
    through,
)
from symdl.kernels.scalar_code import FASTMATH, LITERAL

if TYPE_CHECKING:
    from symdl.kernels.codegen import Generator, LoopCode

Read = tuple[ir.Node, "tuple | None"]
"""A node a step reads and the loop variables it reads it at (None: the whole array)."""


class Step:
    """What every kind of step answers (the planner and the code generator ask only this)."""

    summary: ClassVar[str] = "steps"
    jitted: ClassVar[bool] = True
    """Whether the step runs as jitted loop functions (Numba compiles them on the first call)
    rather than a NumPy/BLAS call from the driver."""
    """What the module's docstring counts it as (plural: "2 BLAS products")."""

    def reads(self) -> list[Read]:
        """The (node, index) pairs the step reads."""
        raise NotImplementedError

    def provides(self) -> set:
        """Keys of what the step computes: node ids, and row-statistics keys."""
        raise NotImplementedError

    def needs(self) -> set:
        """Keys of what the step needs computed before it runs."""
        return {id(op) for op, _ in self.reads()}

    def computed(self) -> list[ir.Node]:
        """The nodes the step writes into arrays the driver allocates (when stored)."""
        return []

    def loop_groups(self) -> list[LoopGroup]:
        """The fused loops the step runs."""
        return []

    def flops(self) -> sp.Expr:
        """The floating-point operations, about, in the dimension symbols."""
        raise NotImplementedError

    def emit(self, gen: Generator, number: int) -> list[str]:
        """The driver's lines for the step (its jitted functions go to ``gen.functions``)."""
        raise NotImplementedError


def jit_decorator(parallel: bool) -> str:
    """The decorator of a generated loop function (serial, or ``parallel=True``)."""
    options = ", parallel=True" if parallel else ""
    return f'@numba.njit(cache=True, error_model="numpy", fastmath={FASTMATH}{options})'


def stats_key(arg: ir.Node, axis: int, kind: str = "exp") -> tuple:
    """The key under which a ``RowStats`` step (``RowMax`` for ``kind="max"``) provides the
    statistics of ``arg``."""
    return ("stats" if kind == "exp" else kind, id(arg), axis)


@dataclass
class Symmetric:
    """``X^T diag(c) X``: the product is symmetric, and when ``c >= 0`` it is ``B^T B`` with
    ``B = sqrt(c) ⊙ X``, which BLAS computes as one triangle (syrk), half the work."""

    base: ir.Node
    rows_first: bool
    """Whether ``base``'s first axis is the summed one (else it is read transposed)."""
    weight: ir.Node | None
    """``c``; None for ``X^T X`` (every weight 1)."""

    def reads(self) -> tuple[ir.Node, ...]:
        """The arrays ``X^T diag(c) X`` reads: ``c`` (unless all ones) and ``X``."""
        if self.weight is None:
            return (self.base,)
        return (self.weight, self.base)


@dataclass(eq=False)
class Contraction(Step):
    node: ir.Einsum
    pattern: tuple[int, int, int]
    symmetric: Symmetric | None = None

    summary: ClassVar[str] = "BLAS products"
    jitted: ClassVar[bool] = False

    def reads(self) -> list[Read]:
        # X^T diag(c) X reads c and X only: the scaled operand is never stored.
        operands = self.symmetric.reads() if self.symmetric else self.node.operands
        return [(op, None) for op in operands]

    def provides(self) -> set:
        return {id(self.node)}

    def computed(self) -> list[ir.Node]:
        return [self.node]

    def flops(self) -> sp.Expr:
        dims = self.node.label_dims()
        a, s, b = self.pattern
        return 2 * dims[a] * dims[s] * dims[b]

    def emit(self, gen: Generator, number: int) -> list[str]:
        node = self.node
        a_other, s, b_other = self.pattern
        (a, b), (sa, sb) = node.operands, node.specs
        left = gen.array_of(a) + ("" if sa == (a_other, s) else ".T")
        right = gen.array_of(b) + ("" if sb == (s, b_other) else ".T")
        out = gen.array_of(node)
        if node.out == (a_other, b_other):
            lines = [f"np.dot({left}, {right}, {out})"]
        else:
            lines = [f"np.dot({_flip(right)}, {_flip(left)}, {out})"]
        sym = self.symmetric
        if sym is not None:
            base = gen.array_of(sym.base) + ("" if sym.rows_first else ".T")
            lines = _symmetric_product(gen, sym, base, out)
        if node.coeff != 1:
            lines.append(f"{out} *= {gen.constant(node.coeff)}")
        return lines


def _symmetric_product(gen: Generator, sym: Symmetric, base: str, out: str) -> list[str]:
    if sym.weight is None:
        return [f"np.dot({base}.T, {base}, {out})  # X^T X: NumPy's BLAS uses syrk"]
    return [
        f"w = {gen.array_of(sym.weight)}.reshape(-1)",
        "if np.all(w >= 0):  # X^T diag(w) X = B^T B: BLAS computes one triangle",
        f"    b = np.sqrt(w)[:, None] * {base}",
        f"    np.dot(b.T, b, {out})",
        "else:",
        f"    b = w[:, None] * {base}",
        f"    np.dot(b.T, {base}, {out})",
    ]


def _flip(operand: str) -> str:
    if operand.endswith(".T"):
        return operand[:-2]
    return operand + ".T"


_SOLVE_OPERAND = {
    ir.Identity: lambda gen, op: f"np.eye(int({gen.size(op.dim)}), dtype=dtype)",
    # A^{-T} 1: the adjoint of a sum of all entries of a solve (total(A^{-1} B) in B).
    ir.Ones: lambda gen, op: f"np.ones({gen.shape_tuple(op)}, dtype=dtype)",
    ir.Zero: None,
}
"""How a linear solve reads an operand that is no array (None: it cannot)."""


@dataclass(eq=False)
class LinearSolve(Step):
    """``A^{-1} B`` by LU factorisation (LAPACK through ``np.linalg.solve``)."""

    node: ir.Solve

    summary: ClassVar[str] = "linear solves"
    jitted: ClassVar[bool] = False

    def reads(self) -> list[Read]:
        return [(self.node.a, None), (self.node.b, None)]

    def provides(self) -> set:
        return {id(self.node)}

    def flops(self) -> sp.Expr:
        # LU: 2/3 r^3, then two triangular solves per column.
        rows = self.node.a.shape[0]
        return sp.Rational(2, 3) * rows**3 + 2 * rows**2 * sp.Mul(*self.node.shape[1:])

    def emit(self, gen: Generator, number: int) -> list[str]:
        node = self.node
        operands = []
        for op in (node.a, node.b):
            if type(op) in _SOLVE_OPERAND or ir.is_scalar_constant(op):
                read = _SOLVE_OPERAND.get(type(op))
                if read is None:
                    raise UnsupportedError(f"a linear solve of a constant {type(op).__name__}")
                operands.append(read(gen, op))
            else:
                operands.append(gen.array_of(op))
        a, b = operands
        out = gen.array_of(node)
        lines = []
        if node.spd:  # Cholesky: LinAlgError where the Gram matrix is numerically singular
            lower = f"lower{number}"
            pivots = f"pivots{number}"
            # The rank test at the kernel's own epsilon: a float32 Gram matrix of a rank-
            # deficient matrix has pivots at float32 rounding level, far above float64's.
            lines += [f"{lower} = np.linalg.cholesky({a})",
                      f"{pivots} = np.abs(np.diag({lower}))",
                      f"if {pivots}.min() ** 2 <= ({GRAM_PIVOT_TOLERANCE} * {pivots}.size"
                      f" * np.finfo(dtype).eps * {pivots}.max() ** 2):",
                      "    raise np.linalg.LinAlgError('the Gram matrix of a pseudo-inverse is "
                      "numerically singular: the matrix does not have full rank')"]
            half = f"np.linalg.solve({lower}, {b}.reshape({b}.shape[0], -1))"
            solved = f"np.linalg.solve({lower}.T, {half}).reshape({out}.shape)"
        else:
            solved = f"np.linalg.solve({a}, {b}.reshape({b}.shape[0], -1)).reshape({out}.shape)"
        if gen.is_root(node):
            return [*lines, f"{out}[...] = {solved}"]
        return [*lines, f"{out} = np.empty({gen.shape_tuple(node)}, dtype=dtype)",
                f"{out}[...] = {solved}"]


@dataclass(eq=False)
class Determinant(Step):
    """``det A`` or ``log |det A|`` in the driver: Cholesky for a matrix declared symmetric
    positive definite (``log det A = 2 Σ log diag L``), else LU with its sign
    (``np.linalg.slogdet``). A singular (or, declared SPD, not positive definite) matrix
    raises ``LinAlgError``, which the kernel turns into a typed ``EvaluationError``."""

    node: ir.Det

    summary: ClassVar[str] = "determinants"
    jitted: ClassVar[bool] = False  # NumPy's LAPACK in the driver (main's Step.jitted)

    def reads(self) -> list[Read]:
        return [(self.node.a, None)]

    def provides(self) -> set:
        return {id(self.node)}

    def flops(self) -> sp.Expr:
        rows = self.node.a.shape[0]
        return (sp.Rational(1, 3) if self.node.spd else sp.Rational(2, 3)) * rows**3

    def emit(self, gen: Generator, number: int) -> list[str]:
        node = self.node
        a = node.a
        if type(a) in _SOLVE_OPERAND or ir.is_scalar_constant(a):
            read = _SOLVE_OPERAND.get(type(a))
            if read is None:
                raise UnsupportedError(f"the determinant of a constant {type(a).__name__}")
            matrix = read(gen, a)
        else:
            matrix = gen.array_of(a)
        sign, logdet = f"sign{number}", f"logdet{number}"
        if node.spd:
            # Of the symmetric part, as evaluation does (Cholesky reads one triangle).
            lines = [f"{logdet} = 2.0 * np.sum(np.log(np.diag(np.linalg.cholesky("
                     f"({matrix} + {matrix}.T) / 2))))",
                     f"{sign} = 1.0"]
        else:
            lines = [f"{sign}, {logdet} = np.linalg.slogdet({matrix})"]
            if node.log:  # det A = 0 is a value; log |det A| = -inf is not
                lines += [f"if {sign} == 0 or not np.isfinite({logdet}):",
                          "    raise np.linalg.LinAlgError('Singular matrix (determinant 0)')"]
        value = logdet if node.log else f"{sign} * np.exp({logdet})"
        out = gen.array_of(node)
        if gen.is_root(node):
            return [*lines, f"{out}[...] = {value}"]
        return [*lines, f"{out} = np.empty({gen.shape_tuple(node)}, dtype=dtype)",
                f"{out}[...] = {value}"]


@dataclass(eq=False)
class RowStats(Step):
    """Max and sum of exp along ``axis`` of ``arg`` (which is materialised)."""

    arg: ir.Node
    axis: int

    summary: ClassVar[str] = "softmax row passes"

    def reads(self) -> list[Read]:
        return [(self.arg, None)]

    def provides(self) -> set:
        return {stats_key(self.arg, self.axis)}

    def flops(self) -> sp.Expr:
        return 4 * sp.Mul(*self.arg.shape)

    def emit(self, gen: Generator, number: int) -> list[str]:
        if self.arg.rank != 2:
            return _emit_lane_stats(self, gen, number)
        arg = gen.array_of(self.arg)
        peak, total = f"peak{number}", f"total{number}"
        gen.stats[(id(self.arg), self.axis)] = (peak, total)
        lanes = 0 if self.axis == 1 else 1
        for parallel in (False, True):
            gen.functions.append(_stats_function(number, self.axis, parallel))
        # In the kernel's dtype: a float32 softmax reads them in float32 arithmetic (each
        # total is summed in float64 before it is stored).
        return [f"{peak} = np.empty({arg}.shape[{lanes}], dtype=dtype)",
                f"{total} = np.empty({arg}.shape[{lanes}], dtype=dtype)",
                *dispatch(f"_stats{number}", f"{arg}, {peak}, {total}", parallel=True)]


def _stats_function(number: int, axis: int, parallel: bool) -> str:
    lanes, length = (0, 1) if axis == 1 else (1, 0)
    at = "r, c" if axis == 1 else "c, r"
    lane = "r, c + {}" if axis == 1 else "c + {}, r"
    chains = "\n".join(f"            m{k} = max(m{k}, z[{lane.format(k)}])" for k in range(8))
    decorator = jit_decorator(parallel)
    variant, loop = ("_parallel", "prange") if parallel else ("", "range")
    return f'''{decorator}
def _stats{number}{variant}(z, peak, total):
    {LITERAL} = z.dtype.type
    length = z.shape[{length}]
    for r in {loop}(z.shape[{lanes}]):
        # Eight running maxima: a max reduction does not vectorise without no-NaN fast-math,
        # but eight independent chains keep the core busy (3.5x faster over 1000 columns).
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = {LITERAL}(-math.inf)
        c = 0
        while c + 8 <= length:
{chains}
            c += 8
        m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
        while c < length:
            m = max(m, z[{at}])
            c += 1
        if not math.isfinite(m):
            m = {LITERAL}(0.0)
        s = 0.0  # float64: the sum of a long row
        for c in range(length):
            s += _exp(z[{at}] - m)
        peak[r] = m
        total[r] = s
'''


def _emit_lane_stats(step: RowStats, gen: Generator, number: int) -> list[str]:
    """The statistics of a tensor of any rank along ``step.axis``: the tensor viewed as
    (outer, length, inner) (a C-contiguous reshape, no copy), one lane per (outer, inner);
    the maxima and sums have the tensor's shape with size 1 along the axis."""
    arg = gen.array_of(step.arg)
    peak, total = f"peak{number}", f"total{number}"
    gen.stats[(id(step.arg), step.axis)] = (peak, total)
    sizes = [f"int({gen.size(d)})" for d in step.arg.shape]
    outer = " * ".join(sizes[:step.axis]) or "1"
    inner = " * ".join(sizes[step.axis + 1:]) or "1"
    kept = sizes[:step.axis] + ["1"] + sizes[step.axis + 1:]
    shape = "(" + ", ".join(kept) + ",)"
    for parallel in (False, True):
        gen.functions.append(_lane_stats_function(number, parallel))
    view = f"np.ascontiguousarray({arg}).reshape(({outer}, {sizes[step.axis]}, {inner}))"
    lanes = f"{peak}.reshape(({outer}, {inner})), {total}.reshape(({outer}, {inner}))"
    return [f"{peak} = np.empty({shape}, dtype=np.float64)",
            f"{total} = np.empty({shape}, dtype=np.float64)",
            *dispatch(f"_stats{number}", f"{view}, {lanes}", parallel=True)]


def _lane_stats_function(number: int, parallel: bool) -> str:
    chains = "\n".join(f"            m{k} = max(m{k}, z[o, c + {k}, i])" for k in range(8))
    decorator = jit_decorator(parallel)
    variant, loop = ("_parallel", "prange") if parallel else ("", "range")
    return f'''{decorator}
def _stats{number}{variant}(z, peak, total):
    length = z.shape[1]
    inner = z.shape[2]
    for r in {loop}(z.shape[0] * inner):
        o = r // inner
        i = r - o * inner
        # Eight running maxima, as for a matrix (see the rank-2 statistics).
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = -math.inf
        c = 0
        while c + 8 <= length:
{chains}
            c += 8
        m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
        while c < length:
            m = max(m, z[o, c, i])
            c += 1
        if not math.isfinite(m):  # -inf: a fully masked lane (its sum is then 0)
            m = 0.0
        s = 0.0
        for c in range(length):
            s += _exp(z[o, c, i] - m)
        peak[o, i] = m
        total[o, i] = s
'''


@dataclass(eq=False)
class LoopGroup(Step):
    """One loop nest over ``dims``; ``members`` in order, each with the loop variables that
    index its axes (``None`` for a size-1 axis), the operands it reads at which loop
    variables (``member_reads``), and which members the loop stores into arrays
    (``stores``, set when the plan is complete)."""

    dims: tuple[sp.Expr, ...]
    members: list[ir.Node] = field(default_factory=list)
    indices: dict[int, tuple] = field(default_factory=dict)
    reductions: set[int] = field(default_factory=set)
    member_reads: dict[int, list[tuple[ir.Node, tuple]]] = field(default_factory=dict)
    stores: set[int] = field(default_factory=set)

    summary: ClassVar[str] = "fused loops"

    def add(self, node: ir.Node, indices: tuple, reduction: bool = False) -> None:
        """Appends ``node`` to the loop's members, computed at loop variables ``indices``."""
        self.members.append(node)
        self.indices[id(node)] = indices
        self.member_reads[id(node)] = node_reads(node)
        if reduction:
            self.reductions.add(id(node))

    def reads_of(self, node: ir.Node) -> list[tuple[ir.Node, tuple]]:
        """The operands member ``node`` reads and the loop variables it reads them at."""
        reads = self.member_reads.get(id(node))
        if reads is None:
            reads = self.member_reads[id(node)] = node_reads(node)
        return reads

    def reads(self) -> list[Read]:
        return [(op, at) for m in self.members for op, at in self.reads_of(m)]

    def provides(self) -> set:
        return {id(m) for m in self.members}

    def needs(self) -> set:
        stats = ((row_stats_of(m), row_stats_kind(m)) for m in self.members)
        return super().needs() | {stats_key(*s, kind) for s, kind in stats if s is not None}

    def computed(self) -> list[ir.Node]:
        return list(self.members)

    def loop_groups(self) -> list[LoopGroup]:
        return [self]

    def flops(self) -> sp.Expr:
        per_entry = sum(entry_flops(m, id(m) in self.reductions) for m in self.members)
        return per_entry * sp.Mul(*self.dims)

    def serial_loop_order(self) -> list[int]:
        """Loop variables outermost first: the one that indexes the last (contiguous) axis of
        the most array accesses goes innermost (a column sum then runs along rows)."""
        count = [0] * len(self.dims)
        for member in self.members:
            accesses = [self.indices[id(member)]] + [at for _, at in self.reads_of(member)]
            for at in accesses:
                used = [v for v in at if v is not None]
                if used:
                    count[used[-1]] += 1
        order = list(range(len(self.dims)))
        if not order:
            return order
        inner = max(reversed(order), key=lambda v: count[v])
        return [v for v in order if v != inner] + [inner]

    def emit(self, gen: Generator, number: int, allow_in_place: bool = True) -> list[str]:
        loop_vars = [f"i{k}" for k in range(len(self.dims))]
        code = gen.loop_code(self, loop_vars, {})
        params = sorted(code.arrays) + [gen.dim_names[d] for d in gen.dims]
        header = ", ".join(params)
        # Outputs this group writes into an input it also reads (a group that only reads the
        # output, written by an earlier group, keeps reading it under its own name).
        in_place = {o: a for o, a in gen.in_place.items()
                    if allow_in_place and o in code.arrays and a in code.arrays}
        gen.in_place_written.update(in_place)
        variants = [("", False, code)]
        if self.dims:
            variants.append(("_parallel", True, code))
        if in_place:
            # The same loop, writing through the inputs' own arrays.
            through = gen.loop_code(self, loop_vars, {}, write_through=in_place)
            variants.append(("_inplace", False, through))
            if self.dims:
                variants.append(("_inplace_parallel", True, through))
        text = [self._function(gen, f"_loop{number}{variant}", header, parallel, body)
                for variant, parallel, body in variants]
        gen.functions.append("\n\n".join(text))
        return dispatch(f"_loop{number}", header, parallel=bool(self.dims),
                        inplace=bool(in_place))

    def _function(self, gen: Generator, name: str, header: str, parallel: bool,
                  code: LoopCode) -> str:
        lines = [jit_decorator(parallel), f"def {name}({header}):",
                 f"    {gen.element_type(sorted(code.arrays), scalar=not self.dims)}"]
        lines += [f"    {s}" for s in code.before]
        indent = "    "
        # The parallel variant splits the first loop (never a summed one: no races); the
        # serial one nests the loops so that the innermost walks memory contiguously.
        order = range(len(self.dims)) if parallel else self.serial_loop_order()
        for k, v in enumerate(order):
            loop = "prange" if (parallel and k == 0) else "range"
            lines.append(f"{indent}for i{v} in {loop}(int({gen.size(self.dims[v])})):")
            indent += "    "
        lines += [f"{indent}{s}" for s in code.body]
        lines += [f"    {s}" for s in code.after]
        lines.append("")
        return "\n".join(lines)


@dataclass(eq=False)
class RowStream(Step):
    """``z = X v``, a loop over the rows of ``X`` that reads ``z`` and computes ``r``, then
    ``g = X^T r``: run serially as one pass over the rows of ``X`` (each row is read once,
    for its dot product and for its share of ``g``), in parallel as the three steps."""

    first: Contraction
    group: LoopGroup
    second: Contraction
    matrix: ir.Node
    rows: int  # the label of X's row axis in ``first``
    cols: int  # the label of X's column axis in ``first``
    rows2: int  # ... and in ``second``
    cols2: int
    vector: ir.Node  # v
    residual: ir.Node  # r

    summary: ClassVar[str] = "row streams"

    def parts(self) -> list[Step]:
        return [self.first, self.group, self.second]

    def reads(self) -> list[Read]:
        return [read for part in self.parts() for read in part.reads()]

    def provides(self) -> set:
        return set().union(*(part.provides() for part in self.parts()))

    def needs(self) -> set:
        return set().union(*(part.needs() for part in self.parts()))

    def computed(self) -> list[ir.Node]:
        return [node for part in self.parts() for node in part.computed()]

    def loop_groups(self) -> list[LoopGroup]:
        return [self.group]

    def flops(self) -> sp.Expr:
        return sp.Add(*(part.flops() for part in self.parts()))

    def emit(self, gen: Generator, number: int) -> list[str]:
        """Serial: one function, one pass over the rows of X. Parallel: the three steps."""
        parallel = [*self.first.emit(gen, number),
                    self.group.emit(gen, number, allow_in_place=False)[1].strip(),
                    *self.second.emit(gen, number)]
        header = gen.stream_function(self, number)
        return ["if parallel:", *(f"    {line}" for line in parallel), "else:",
                f"    _stream{number}({header})"]


STEP_KINDS: tuple[type[Step], ...] = (Contraction, LoopGroup, RowStats, LinearSolve,
                                     Determinant, RowStream)
"""Every kind of step, in the order the module's docstring counts them."""


def dispatch(function: str, args: str, parallel: bool, inplace: bool = False) -> list[str]:
    """Lines that call ``function`` or, when the caller asks for them, its parallel and its
    in-place variants."""
    def choose(prefix: str) -> list[str]:
        if not parallel:
            return [f"{prefix}({args})"]
        return ["if parallel:", f"    {prefix}_parallel({args})", "else:", f"    {prefix}({args})"]

    if not inplace:
        return choose(function)
    return (["if inplace:", *(f"    {line}" for line in choose(f"{function}_inplace")), "else:",
             *(f"    {line}" for line in choose(function))])


@dataclass(eq=False)
class MatrixFunctionStep(Step):
    """A norm, the singular values, the symmetric eigenvalues, or a factor their derivatives
    read (``ir.MatrixFunction``), in the driver through NumPy's LAPACK (SVD, ``eigh``). The
    module embeds ``symdl.ir.matrix_functions.SOURCE``, the code NumPy evaluation runs, so a
    kernel refuses the inputs evaluation refuses (repeated singular values or eigenvalues
    where a derivative reads their vectors): ``LinAlgError``, which the kernel turns into a
    typed ``EvaluationError``."""

    node: ir.MatrixFunction

    summary: ClassVar[str] = "factorisations"
    jitted: ClassVar[bool] = False  # NumPy's LAPACK in the driver, as determinants

    def reads(self) -> list[Read]:
        return [(self.node.a, None)]

    def provides(self) -> set:
        return {id(self.node)}

    def flops(self) -> sp.Expr:
        if self.node.kind in ("fro", "tril_half"):
            return 2 * sp.Mul(*self.node.a.shape)
        rows, cols = self.node.a.shape
        if self.node.kind == "cholesky":
            return rows**3 / 3
        return 4 * rows * cols**2 + 8 * cols**3  # an SVD or eigh, about

    def emit(self, gen: Generator, number: int) -> list[str]:
        node = self.node
        a = node.a
        lines = []
        if type(a) in _SOLVE_OPERAND or ir.is_scalar_constant(a):
            read = _SOLVE_OPERAND.get(type(a))
            if read is None:
                raise UnsupportedError(f"a matrix function of a constant {type(a).__name__}")
            matrix = f"operand{number}"
            lines.append(f"{matrix} = {read(gen, a)}")
        else:
            matrix = gen.array_of(a)
        if MATRIX_FUNCTION_SOURCE not in gen.functions:
            gen.functions.append(MATRIX_FUNCTION_SOURCE)
        out = gen.array_of(node)
        if not gen.is_root(node):
            lines.append(f"{out} = np.empty({gen.shape_tuple(node)}, dtype=dtype)")
        # Object mode: the compiled driver (compiled=True) calls the same Python function,
        # whose errors name the values they refuse; the arrays are shared, not copied.
        return [*lines, "with numba.objmode():",
                f"    {out}[...] = _matrix_function({node.kind!r}, {matrix})"]


STEP_KINDS += (MatrixFunctionStep,)



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

    summary: ClassVar[str] = "scatter loops"

    def __post_init__(self) -> None:
        if self.fused is not None:
            self.loop_dims, self.arg_vars = iteration(self.fused)
            self.value_reads = node_reads(self.fused)
        else:
            self.loop_dims, self.arg_vars = _plain_space(self.node.arg)
            self.value_reads = through([(self.node.arg, self.arg_vars)])

    def reads(self) -> list[Read]:
        reads = list(self.value_reads)
        if isinstance(self.node, ir.TakeAdjoint):
            reads.append((self.node.indices, self.arg_vars[:self.node.indices.rank]))
        return reads

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
        owned = [a for a in owning_axes(node) if self.arg_vars[a] is not None]
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
        factors = [gen.read_tracked(op, at, loop) for op, at in self.value_reads]
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
            order = list(range(len(self.loop_dims)))
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


@dataclass(eq=False)
class RowMax(Step):
    """The maximum of ``arg`` along ``axis`` and the position of its first maximum, for each
    entry of the other axes: one pass along the axis, NaN as ``numpy.max`` (a NaN is the
    maximum, the first NaN its position). ``Max`` and ``ArgMaxMask`` read the two arrays.
    ``arg`` is read where it lies (a pooling window is read through, never stored)."""

    arg: ir.Node
    axis: int
    loop_dims: tuple = ()
    arg_vars: tuple = ()
    value_reads: list = field(default_factory=list)

    summary: ClassVar[str] = "max row passes"

    def __post_init__(self) -> None:
        self.loop_dims, self.arg_vars = _plain_space(self.arg)
        self.value_reads = through([(self.arg, self.arg_vars)])

    def reads(self) -> list[Read]:
        return list(self.value_reads)

    def provides(self) -> set:
        return {stats_key(self.arg, self.axis, "max")}

    def flops(self) -> sp.Expr:
        return 2 * sp.Mul(*self.arg.shape)

    def emit(self, gen: Generator, number: int) -> list[str]:
        peak, first = f"peak{number}", f"first{number}"
        gen.stats[("max", id(self.arg), self.axis)] = (peak, first)
        loop_vars = [f"i{k}" for k in range(len(self.loop_dims))]
        loop = gen.new_loop(LoopGroup(self.loop_dims), loop_vars)
        ((op, at),) = self.value_reads
        value = gen.read_tracked(op, at, loop)
        loop.arrays.update((peak, first))
        along = self.arg_vars[self.axis]
        kept = [loop_vars[v] if v is not None and k != self.axis else "0"
                for k, v in enumerate(self.arg_vars)]
        where = ", ".join(kept) or "0"
        outer = [v for v in range(len(self.loop_dims)) if v != along]
        header = ", ".join(sorted(loop.arrays) + [gen.dim_names[d] for d in gen.dims])
        text = []
        for variant, parallel in (("", False), ("_parallel", True)):
            if parallel and not outer:
                continue
            lines = [jit_decorator(parallel), f"def _rowmax{number}{variant}({header}):",
                     *(f"    {s}" for s in loop.before)]
            indent = "    "
            for k, v in enumerate(outer):
                kind = "prange" if parallel and k == 0 else "range"
                lines.append(f"{indent}for i{v} in {kind}(int({gen.size(self.loop_dims[v])})):")
                indent += "    "
            scan = []
            if along is not None:
                size = gen.size(self.loop_dims[along])
                scan = [f"for i{along} in range(1, int({size})):",
                        f"    v = {value}",
                        # Strictly larger: the first maximum wins ties; a NaN beats any
                        # number and then stays (numpy.max, numpy.argmax).
                        "    if v > m or (v != v and m == m):",
                        "        m = v",
                        f"        a = i{along}"]
            lines += [f"{indent}{s}" for s in
                      ([f"i{along} = 0"] if along is not None else [])
                      + [f"m = {value}", "a = 0", *scan,
                         f"{peak}[{where}] = m", f"{first}[{where}] = a"]]
            text.append("\n".join([*lines, ""]))
        gen.functions.append("\n\n".join(text))
        shape = list(self.arg.shape)
        shape[self.axis] = 1
        sizes = "(" + ", ".join(f"int({gen.size(d)})" for d in shape) + ",)"
        return [f"{peak} = np.empty({sizes}, dtype=dtype)",
                f"{first} = np.empty({sizes}, dtype=np.int64)",
                *dispatch(f"_rowmax{number}", header, parallel=bool(outer))]


STEP_KINDS = (*STEP_KINDS, ScatterLoop, RowMax)


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
    if tuple(orest) == free_o + summed:
        other_first = True
    elif tuple(orest) == summed + free_o:
        other_first = False
    else:
        return None
    if tuple(outr) == free_o + free_w:
        out_other_first = True
    elif tuple(outr) == free_w + free_o:
        out_other_first = False
    else:
        return None
    return WindowProduct(node, window, other, batch, summed, free_w, free_o, other_first,
                         out_other_first, accumulate)


STEP_KINDS = (*STEP_KINDS, WindowProduct)


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



@dataclass(eq=False)
class ScanStep(Step):
    """A recurrence (``ir.Scan``): a loop over ``t`` in the driver around the code of its step,
    generated once (``Generator.scan_code``), never unrolled. The step reads its sequences at
    ``t`` as views, the carry from a buffer (or the previous stored state), the closure from
    the arrays the plan computed before the loop."""

    node: ir.Scan
    body_flops: sp.Expr = sp.Integer(0)
    """Filled in when the step's code is generated (the step's own plan counts them)."""

    summary: ClassVar[str] = "recurrences"
    jitted: ClassVar[bool] = True

    def reads(self) -> list[Read]:
        return [(child, None) for child in self.node.children()]

    def provides(self) -> set:
        return {id(self.node)}

    def computed(self) -> list[ir.Node]:
        return [self.node]

    def flops(self) -> sp.Expr:
        return self.node.length * self.body_flops

    def emit(self, gen: Generator, number: int) -> list[str]:
        return gen.scan_code(self, number)


STEP_KINDS = STEP_KINDS + (ScanStep,)
