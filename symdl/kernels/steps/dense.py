"""Steps on whole matrices and fused loops: BLAS products, LAPACK solves, determinants and
matrix functions, row statistics of softmax, fused loop nests and row streams.
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
    node_reads,
    row_stats_kind,
    row_stats_of,
)
from symdl.kernels.scalar_code import LITERAL
from symdl.kernels.steps.base import Read, Step, dispatch, jit_decorator, stats_key

if TYPE_CHECKING:
    from symdl.kernels.codegen import Generator, LoopCode


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
