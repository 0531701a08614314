"""Kernel plan -> Python source: jitted loop functions and a plain-Python driver.

The driver allocates temporaries, calls NumPy's BLAS for matrix products (Numba's own
``np.dot`` would need SciPy) and the jitted loop functions for everything else. Each loop
function exists twice, serial and ``parallel=True`` (separate names: Numba's disk cache keys
on the function, not on its options). User strings never become code: arrays are
``a0, a1, ...``, dimensions ``n0, n1, ...``, and names appear only in ``ascii()`` comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp

from symdl import ir
from symdl.errors import UnsupportedError
from symdl.kernels.plan import (
    Contraction,
    LinearSolve,
    LoopGroup,
    Plan,
    RowStats,
    RowStream,
    einsum_label_vars,
    node_reads,
    operand_reads,
    storing_groups,
    summed_labels,
)
from symdl.kernels.scalar_code import CHECK, FASTMATH, ScalarPrinter, helper_source


@dataclass
class Source:
    """A generated kernel module: its text, and the argument and output order of ``kernel``."""

    text: str
    inputs: list[str]
    outputs: list[str]
    dims: list[sp.Symbol]
    in_place: list[str] = field(default_factory=list)
    """Outputs named like an input that the plan may write into that input's array. When
    every one of them is (``out[name]`` is the input), ``kernel(..., inplace=True)`` runs loop
    variants that read and write through one array: LLVM vectorises those, but falls back to
    scalar code when a loop reads and writes two arguments that overlap."""


class _Namer:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.counter = 0

    def temp(self, node: ir.Node, prefix: str = "t") -> str:
        if id(node) not in self.names:
            self.names[id(node)] = f"{prefix}{self.counter}"
            self.counter += 1
        return self.names[id(node)]


def generate(plan: Plan, leaves: list[ir.Leaf], title: str) -> Source:
    """The Python source of a kernel module for ``plan``."""
    gen = _Generator(plan, leaves, title)
    return gen.source()


class _Generator:
    def __init__(self, plan: Plan, leaves: list[ir.Leaf], title: str):
        self.plan = plan
        self._scalar_locals: tuple[dict[str, str], set[int]] | None = None
        self.leaves = sorted(leaves, key=lambda leaf: leaf.name)
        self.title = title
        self.arrays: dict[int, str] = {}
        for k, leaf in enumerate(self.leaves):
            self.arrays[id(leaf)] = f"a{k}"
        self.outputs = list(plan.roots)
        for k, name in enumerate(self.outputs):
            node = plan.roots[name]
            self.arrays.setdefault(id(node), f"out{k}")
        leaf_named = {leaf.name: leaf for leaf in self.leaves}
        self.in_place: dict[str, str] = {}
        """``outK -> aI`` for each output that may be written into input ``aI`` (same name)."""
        for k, name in enumerate(self.outputs):
            leaf = leaf_named.get(name)
            if (leaf is not None and leaf.rank and self.arrays[id(plan.roots[name])] == f"out{k}"
                    and plan.in_place_safe(name, leaf)):
                self.in_place[f"out{k}"] = self.arrays[id(leaf)]
        self.in_place_written: set[str] = set()
        dims: set[sp.Symbol] = set()
        for leaf in self.leaves:
            for d in leaf.shape:
                dims |= sp.sympify(d).free_symbols
        self.dims = sorted(dims, key=str)
        self.dim_names = {d: f"n{k}" for k, d in enumerate(self.dims)}
        self.namer = _Namer()
        self.stats: dict[tuple[int, int], tuple[str, str]] = {}
        self.functions: list[str] = []
        # A node recomputed in several loops (a cheap function of inputs) is stored by the
        # first of them only: one array, written once, complete before any later reader.
        self.home = storing_groups(plan.steps)
        self._temp_at: dict[int, tuple] = {}

    # -- naming and reading -----------------------------------------------------------

    def array_of(self, node: ir.Node) -> str:
        if id(node) not in self.arrays:
            self.arrays[id(node)] = self.namer.temp(node, "m")
        return self.arrays[id(node)]

    def size(self, dim: sp.Expr) -> str:
        return ScalarPrinter(self.dim_names, integers=True).doprint(sp.sympify(dim))

    def shape_tuple(self, node: ir.Node) -> str:
        sizes = [f"int({self.size(d)})" for d in node.shape] or ["1"]
        return "(" + ", ".join(sizes) + ",)"

    def constant(self, value: sp.Expr) -> str:
        return ScalarPrinter(self.dim_names).doprint(sp.sympify(value))

    def read(self, node: ir.Node, at: tuple, loop_vars: list[str], temps: dict[int, str]) -> str:
        """The value of ``node`` at loop variables ``at`` inside a loop body."""
        if id(node) in temps:
            own = self._temp_at.get(id(node), at)
            if own != at:
                # The loop's temporary holds the entry at ``own``; reading it for another
                # entry is a wrong number, so a plan that asks for it must never run.
                raise RuntimeError(
                    f"symdl internal error: a loop reads a value it computes at {own} at {at};"
                    " please report this definition")
            return temps[id(node)]
        if isinstance(node, ir.Ones):
            return "1.0"
        if isinstance(node, ir.Zero):
            return "0.0"
        if isinstance(node, ir.Identity):
            a, b = (loop_vars[v] if v is not None else "0" for v in at)
            return f"(1.0 if {a} == {b} else 0.0)"
        if ir.is_scalar_constant(node):
            return self.constant(node.coeff)
        name = self.array_of(node)
        if node.rank == 0:
            return name if isinstance(node, ir.Leaf) else f"{name}[0]"
        index = ", ".join(loop_vars[v] if v is not None else "0" for v in at)
        return f"{name}[{index}]"

    # -- loop groups ------------------------------------------------------------------

    def loop_group(self, group: LoopGroup, number: int, allow_in_place: bool = True) -> list[str]:
        loop_vars = [f"i{k}" for k in range(len(group.dims))]
        before, body, after, used_arrays = self.group_body(group, loop_vars, {})
        params = sorted(used_arrays) + [self.dim_names[d] for d in self.dims]
        header = ", ".join(params)
        text = []
        # Outputs this group writes into an input it also reads (a group that only reads the
        # output, written by an earlier group, keeps reading it under its own name).
        in_place = {o: a for o, a in self.in_place.items()
                    if allow_in_place and o in used_arrays and a in used_arrays}
        self.in_place_written.update(in_place)
        variants = [("", False, False)]
        if group.dims:
            variants.append(("_parallel", True, False))
        if in_place:
            variants.append(("_inplace", False, True))
            if group.dims:
                variants.append(("_inplace_parallel", True, True))
        for variant, parallel, writes_inputs in variants:
            decorator = f'@numba.njit(cache=True, error_model="numpy", fastmath={FASTMATH}' + (
                ", parallel=True)" if parallel else ")")
            lines = [decorator, f"def _loop{number}{variant}({header}):"]
            lines += [f"    {s}" for s in before]
            indent = "    "
            # The parallel variant splits the first loop (never a summed one: no races); the
            # serial one nests the loops so that the innermost walks memory contiguously.
            order = range(len(group.dims)) if parallel else _serial_loop_order(group)
            for k, (var, dim) in enumerate((loop_vars[v], group.dims[v]) for v in order):
                loop = "prange" if (parallel and k == 0) else "range"
                lines.append(f"{indent}for {var} in {loop}(int({self.size(dim)})):")
                indent += "    "
            lines += [f"{indent}{s}" for s in body]
            lines += [f"    {s}" for s in after]
            lines.append("")
            function = "\n".join(lines)
            if writes_inputs:  # the same loop, writing through the inputs' own arrays
                function = re.sub(r"\b(out\d+)\b(?=\[)",
                                  lambda m: in_place.get(m.group(1), m.group(1)), function)
            text.append(function)
        self.functions.append("\n\n".join(text))
        return _dispatch(f"_loop{number}", header, parallel=bool(group.dims),
                         inplace=bool(in_place))

    def group_body(self, group: LoopGroup, loop_vars: list[str], temps: dict[int, str]):
        """(lines before the loops, the loop body, lines after, arrays used) of a group;
        ``temps`` may name values the caller computes in the body itself."""
        body: list[str] = []
        before: list[str] = []
        after: list[str] = []
        used_arrays: set[str] = set()
        seen: set[int] = set()
        # Scalars computed by earlier steps are read once, before the loops, into locals:
        # read as m0[0] inside the loop, LLVM must reload them after every store to an output
        # it cannot prove distinct, and the loop does not vectorise.
        scalar_locals: dict[str, str] = {}
        if group.dims:
            self._scalar_locals = (scalar_locals, {id(m) for m in group.members})
        self._temp_at = {}
        for node in group.members:
            # A member listed twice (an input map recomputed for two readers) is emitted once:
            # emitting it again reused the next temporary's name and clobbered it.
            if id(node) in seen:
                continue
            seen.add(id(node))
            value = self.member_value(node, group, loop_vars, temps, body, used_arrays)
            stored = (id(node) in self.plan.materialized
                      and self.home.get(id(node), id(group)) == id(group))
            if id(node) in group.reductions:
                target = self.array_of(node)
                used_arrays.add(target)
                at = group.indices[id(node)]
                if all(v is None for v in at):
                    acc = f"acc{len(before)}"
                    before.append(f"{acc} = 0.0")
                    body.append(f"{acc} += {value}")
                    after.append(f"{target}[{', '.join('0' for _ in range(max(node.rank, 1)))}]"
                                 f" = {acc}")
                else:
                    before.append(f"{target}[...] = 0.0")
                    index = ", ".join(loop_vars[v] if v is not None else "0" for v in at)
                    body.append(f"{target}[{index}] += {value}")
                continue
            temp = f"t{len(temps)}"
            body.append(f"{temp} = {value}")
            temps[id(node)] = temp
            self._temp_at[id(node)] = group.indices[id(node)]
            if stored:
                target = self.array_of(node)
                used_arrays.add(target)
                at = group.indices[id(node)]
                index = ", ".join(loop_vars[v] if v is not None else "0" for v in at) or "0"
                body.append(f"{target}[{index}] = {temp}")
        self._scalar_locals = None
        before[:0] = [f"{local} = {name}[0]" for name, local in scalar_locals.items()]
        return before, body, after, used_arrays

    def row_stream(self, step: RowStream, number: int) -> list[str]:
        """Serial: one function, one pass over the rows of X. Parallel: the three steps."""
        parallel = [*self.contraction(step.first),
                    self.loop_group(step.group, number, allow_in_place=False)[1].strip(),
                    *self.contraction(step.second)]
        X, z, g = step.matrix, step.first.node, step.second.node
        vector = next(op for op in step.first.node.operands if op is not X)
        r = next(op for op in step.second.node.operands if op is not X)
        temps = {id(z): "zi"}
        before, body, after, used = self.group_body(step.group, ["i0"], temps)
        rv = temps.get(id(r)) or self.read(r, (0,), ["i0"], temps)

        def at(node, spec, labels):
            return ", ".join(labels.get(lab, "0") for lab in spec)

        xs = self.array_of(X)
        first_spec = dict(zip(step.first.node.operands, step.first.node.specs, strict=True))
        x_index = at(X, first_spec[X], {step.rows: "i0", step.cols: "j"})
        v_index = at(vector, first_spec[vector], {step.cols: "j"})
        z_index = at(z, z.out, {step.rows: "i0"})
        g_index = at(g, g.out, {step.cols2: "j"})
        coeff = self.constant(g.coeff)
        arrays = sorted(used | {xs, self.array_of(vector), self.array_of(z), self.array_of(g)})
        header = ", ".join(arrays + [self.dim_names[d] for d in self.dims])
        row_axis = first_spec[X].index(step.rows)  # X may be read transposed (X^T v)
        rows, cols = self.size(X.shape[row_axis]), self.size(X.shape[1 - row_axis])
        # Blocks of rows that fit in L2 (256 KB of X): X is read from memory once, the row
        # products and the pointwise part each run as their own loop over the block (the
        # pointwise loop vectorises across rows), then X^T r re-reads the block from cache.
        lines = [f'@numba.njit(cache=True, error_model="numpy", fastmath={FASTMATH})',
                 f"def _stream{number}({header}):",
                 f"    {self.array_of(g)}[...] = 0.0",
                 *(f"    {s}" for s in before),
                 f"    block = max(1, min(256, 32768 // max(int({cols}), 1)))",
                 f"    rbuf = np.empty(block, {xs}.dtype)",
                 f"    for b0 in range(0, int({rows}), block):",
                 f"        b1 = min(b0 + block, int({rows}))",
                 "        for i0 in range(b0, b1):",
                 "            zi = 0.0",
                 f"            for j in range(int({cols})):",
                 f"                zi += {xs}[{x_index}] * {self.array_of(vector)}[{v_index}]",
                 f"            {self.array_of(z)}[{z_index}] = zi",
                 "        for i0 in range(b0, b1):",
                 f"            zi = {self.array_of(z)}[{z_index}]",
                 *(f"            {s}" for s in body),
                 f"            rbuf[i0 - b0] = {coeff} * {rv}",
                 "        for i0 in range(b0, b1):",
                 "            ri = rbuf[i0 - b0]",
                 f"            for j in range(int({cols})):",
                 f"                {self.array_of(g)}[{g_index}] += {xs}[{x_index}] * ri",
                 *(f"    {s}" for s in after), ""]
        self.functions.append("\n".join(lines))
        return ["if parallel:", *(f"    {line}" for line in parallel), "else:",
                f"    _stream{number}({header})"]

    def member_value(self, node, group, loop_vars, temps, body, used_arrays) -> str:
        if isinstance(node, ir.Einsum):
            label_vars = einsum_label_vars(node)
            reads = operand_reads(node, label_vars)
            factors = [self.constant(node.coeff)] if node.coeff != 1 else []
            for op, at in reads:
                factors.append(self._read_tracked(op, at, loop_vars, temps, used_arrays))
            factors = [f for f in factors if f != "1.0"] or ["1.0"]
            return _bounded_join(factors, " * ", body)
        at = group.indices[id(node)]
        reads = operand_reads(node, at)
        values = [self._read_tracked(op, a, loop_vars, temps, used_arrays) for op, a in reads]
        if isinstance(node, ir.Add):
            return _bounded_join(values, " + ", body)
        if isinstance(node, ir.Map):
            names = {}
            for var, value in zip(node.fn.variables, values, strict=True):
                temp = f"x{len(body)}_{len(names)}"
                body.append(f"{temp} = {value}")
                names[var] = temp
            names.update(self.dim_names)
            return ScalarPrinter(names).doprint(node.fn.expr)
        if isinstance(node, (ir.LogSumExp, ir.Softmax)):
            peak, total = self.stats[(id(node.arg), node.axis)]
            used_arrays.update((peak, total))
            lane_axis = 0 if node.axis == 1 else 1
            v = at[lane_axis]
            row = loop_vars[v] if v is not None else "0"
            if isinstance(node, ir.LogSumExp):
                return f"({peak}[{row}] + math.log({total}[{row}]))"
            return f"(_exp({values[0]} - {peak}[{row}]) / {total}[{row}])"
        raise TypeError(f"no loop code for {type(node).__name__}")

    def _read_tracked(self, op, at, loop_vars, temps, used_arrays) -> str:
        if (self._scalar_locals is not None and op.rank == 0 and not isinstance(op, ir.Leaf)
                and id(op) in self.arrays and id(op) not in temps
                and id(op) not in self._scalar_locals[1]):
            name = self.arrays[id(op)]
            used_arrays.add(name)
            return self._scalar_locals[0].setdefault(name, f"{name}_0")
        text = self.read(op, at, loop_vars, temps)
        if id(op) in self.arrays and id(op) not in temps:
            used_arrays.add(self.arrays[id(op)])
        return text

    # -- other steps --------------------------------------------------------------------

    def contraction(self, step: Contraction) -> list[str]:
        node = step.node
        a_other, s, b_other = step.pattern
        (a, b), (sa, sb) = node.operands, node.specs
        left = self.array_of(a) + ("" if sa == (a_other, s) else ".T")
        right = self.array_of(b) + ("" if sb == (s, b_other) else ".T")
        out = self.array_of(node)
        if node.out == (a_other, b_other):
            general = f"np.dot({left}, {right}, {out})"
        else:
            general = f"np.dot({_flip(right)}, {_flip(left)}, {out})"
        lines = [general]
        sym = step.symmetric
        if sym is not None and sym.weight is None:
            base = self.array_of(sym.base) + ("" if sym.rows_first else ".T")
            lines = [f"np.dot({base}.T, {base}, {out})  # X^T X: NumPy's BLAS uses syrk"]
        elif sym is not None:
            weight = f"{self.array_of(sym.weight)}.reshape(-1)"
            base = self.array_of(sym.base) + ("" if sym.rows_first else ".T")
            lines = [
                f"w = {weight}",
                "if np.all(w >= 0):  # X^T diag(w) X = B^T B: BLAS computes one triangle",
                f"    b = np.sqrt(w)[:, None] * {base}",
                f"    np.dot(b.T, b, {out})",
                "else:",
                f"    b = w[:, None] * {base}",
                f"    np.dot(b.T, {base}, {out})",
            ]
        if node.coeff != 1:
            lines.append(f"{out} *= {self.constant(node.coeff)}")
        return lines

    def linear_solve(self, step: LinearSolve) -> list[str]:
        node = step.node
        operands = []
        for op in (node.a, node.b):
            if isinstance(op, ir.Identity):
                operands.append(f"np.eye(int({self.size(op.dim)}), dtype=dtype)")
            elif isinstance(op, (ir.Ones, ir.Zero)) or ir.is_scalar_constant(op):
                raise UnsupportedError(f"a linear solve of a constant {type(op).__name__}")
            else:
                operands.append(self.array_of(op))
        a, b = operands
        out = self.array_of(node)
        solved = f"np.linalg.solve({a}, {b}.reshape({b}.shape[0], -1)).reshape({out}.shape)"
        if id(node) in {id(r) for r in self.plan.roots.values()}:
            return [f"{out}[...] = {solved}"]
        return [f"{out} = np.empty({self.shape_tuple(node)}, dtype=dtype)",
                f"{out}[...] = {solved}"]

    def row_stats(self, step: RowStats, number: int) -> list[str]:
        arg = self.array_of(step.arg)
        peak, total = f"peak{number}", f"total{number}"
        self.stats[(id(step.arg), step.axis)] = (peak, total)
        lanes, length = (0, 1) if step.axis == 1 else (1, 0)
        at = "r, c" if step.axis == 1 else "c, r"
        lane = "r, c + {}" if step.axis == 1 else "c + {}, r"
        chains = "\n".join(f"            m{k} = max(m{k}, z[{lane.format(k)}])" for k in range(8))
        for variant in ("", "_parallel"):
            decorator = (f'@numba.njit(cache=True, error_model="numpy", fastmath={FASTMATH}'
                         + (", parallel=True)" if variant else ")"))
            loop = "prange" if variant else "range"
            self.functions.append(f'''{decorator}
def _stats{number}{variant}(z, peak, total):
    length = z.shape[{length}]
    for r in {loop}(z.shape[{lanes}]):
        # Eight running maxima: a max reduction does not vectorise without no-NaN fast-math,
        # but eight independent chains keep the core busy (3.5x faster over 1000 columns).
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = -math.inf
        c = 0
        while c + 8 <= length:
{chains}
            c += 8
        m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
        while c < length:
            m = max(m, z[{at}])
            c += 1
        if not math.isfinite(m):
            m = 0.0
        s = 0.0
        for c in range(length):
            s += _exp(z[{at}] - m)
        peak[r] = m
        total[r] = s
''')
        return [f"{peak} = np.empty({arg}.shape[{lanes}], dtype=np.float64)",
                f"{total} = np.empty({arg}.shape[{lanes}], dtype=np.float64)",
                *_dispatch(f"_stats{number}", f"{arg}, {peak}, {total}", parallel=True)]

    # -- the module ---------------------------------------------------------------------

    def source(self) -> Source:
        checks: list[str] = []
        for d in self.dims:
            checks.append(f"{self.dim_names[d]} = {self._dim_from_arrays(d)}  # {ascii(str(d))}")
        # Shape checks: the loops below index without bounds checks, so they must hold.
        for leaf in self.leaves:
            if leaf.rank:
                name = self.arrays[id(leaf)]
                shape = self.shape_tuple(leaf)
                checks.append(f"_check({name}, {shape}, dtype, {ascii(leaf.name)})")
        for k, name in enumerate(self.outputs):
            node = self.plan.roots[name]
            checks.append(f"_check(out{k}, {self.shape_tuple(node)}, dtype, {ascii(name)})")
        driver: list[str] = []
        roots = {id(n) for n in self.plan.roots.values()}
        allocated: set[int] = set()
        for k, step in enumerate(self.plan.steps):
            nodes = [step.node] if isinstance(step, Contraction) else (
                step.members if isinstance(step, LoopGroup) else [])
            if isinstance(step, RowStream):
                nodes = [step.first.node, *step.group.members, step.second.node]
            for node in nodes:
                if (id(node) in self.plan.materialized and id(node) not in roots
                        and id(node) not in allocated):
                    allocated.add(id(node))
                    driver.append(f"{self.array_of(node)} = np.empty({self.shape_tuple(node)}"
                                  f", dtype=dtype)")
            if isinstance(step, Contraction):
                driver += self.contraction(step)
            elif isinstance(step, LinearSolve):
                driver += self.linear_solve(step)
            elif isinstance(step, RowStats):
                driver += self.row_stats(step, k)
            elif isinstance(step, RowStream):
                driver += self.row_stream(step, k)
            else:
                driver += self.loop_group(step, k)
        inputs = [leaf.name for leaf in self.leaves]
        args = [self.arrays[id(leaf)] for leaf in self.leaves]
        outs = [f"out{k}" for k in range(len(self.outputs))]
        copies = []
        for k, name in enumerate(self.outputs):
            node = self.plan.roots[name]
            # A constant output (a zero or constant Hessian block) has no step writing it.
            if isinstance(node, ir.Zero):
                copies.append(f"out{k}[...] = 0.0")
                continue
            if isinstance(node, ir.Einsum) and not node.operands:
                copies.append(f"out{k}[...] = {self.constant(node.coeff)}")
                continue
            if self.arrays[id(node)] != f"out{k}":
                copies.append(f"out{k}[...] = {self.arrays[id(node)]}")
        n_blas = sum(isinstance(s, Contraction) for s in self.plan.steps)
        n_loops = sum(isinstance(s, LoopGroup) for s in self.plan.steps)
        doc = [
            "Generated by symdl. Do not edit: regenerate it from the definition.",
            "",
            f"Definition: {ascii(self.title)}",
            "Arguments (a0, a1, ...): " + ", ".join(ascii(n) for n in inputs),
            "Outputs (out0, out1, ...): " + ", ".join(ascii(n) for n in self.outputs),
            "Dimensions (n0, n1, ...): " + ", ".join(ascii(str(d)) for d in self.dims),
            f"Steps: {len(self.plan.steps)} ({n_blas} BLAS products, {n_loops} fused loops, "
            f"{len(self.plan.steps) - n_blas - n_loops} softmax row passes)",
            f"Floating-point operations, about: {self._op_count()}",
        ]
        # ascii() keeps quotes: a name holding three double quotes would close the docstring.
        text = "\n".join(doc).replace("\\", "\\\\").replace('"', "\\x22")
        lines = ['"""' + text + '\n"""', "", "import math", "", "import numba",
                 "import numpy as np", "from numba import prange", "",
                 _helpers(helper_source(self.functions), self.functions), CHECK, ""]
        lines += ["\n".join(["", f.rstrip(), ""]) for f in self.functions]
        signature = ", ".join(args + outs)
        arrays = [self.arrays[id(leaf)] for leaf in self.leaves if leaf.rank]
        dtype_src = arrays[0] if arrays else "out0"
        run_args = ", ".join(args + outs + [self.dim_names[d] for d in self.dims]
                             + ["parallel", "inplace"])
        lines += _driver(driver + copies, run_args, f"{dtype_src}.dtype")
        lines += ["", "", f"def kernel({signature}, parallel=False, compiled=False, "
                  "inplace=False):",
                  '    """Checks the arrays, then computes every output into the preallocated'
                  ' out arrays."""',
                  f"    dtype = {dtype_src}.dtype"]
        lines += [f"    {line}" for line in checks]
        lines.append(f"    (_steps_compiled if compiled else _steps)({run_args})")
        lines.append("")
        in_place = [self.outputs[int(o[3:])] for o in sorted(self.in_place_written)]
        return Source("\n".join(lines), inputs, self.outputs, self.dims, in_place)

    def _op_count(self) -> str:
        """A symbolic estimate of the arithmetic, in the dimension names."""
        total = sp.Integer(0)
        steps = []
        for step in self.plan.steps:
            parts = [step.first, step.group, step.second] if isinstance(step, RowStream) else [step]
            steps += parts
        for step in steps:
            if isinstance(step, LinearSolve):  # LU: 2/3 r^3, two triangular solves per column
                rows = step.node.a.shape[0]
                total += sp.Rational(2, 3) * rows**3 + 2 * rows**2 * sp.Mul(*step.node.shape[1:])
                continue
            if isinstance(step, Contraction):
                dims = step.node.label_dims()
                a, s_, b = step.pattern
                total += 2 * dims[a] * dims[s_] * dims[b]
            elif isinstance(step, RowStats):
                total += 4 * sp.Mul(*step.arg.shape)
            else:
                per_entry = 0
                for node in step.members:
                    if isinstance(node, ir.Einsum):
                        per_entry += max(len(node.operands) - 1, 0) + (
                            1 if id(node) in step.reductions else 0) + (node.coeff != 1)
                    elif isinstance(node, ir.Map):
                        per_entry += max(sp.count_ops(node.fn.expr), 1)
                    elif isinstance(node, ir.Add):
                        per_entry += len(node.terms) - 1
                    else:
                        per_entry += 3
                total += per_entry * sp.Mul(*step.dims)
        return str(sp.expand(total))

    def _dim_from_arrays(self, dim: sp.Symbol) -> str:
        for leaf in self.leaves:
            for axis, d in enumerate(leaf.shape):
                if d == dim:
                    return f"{self.arrays[id(leaf)]}.shape[{axis}]"
        raise UnsupportedError(
            f"dimension {dim} appears only inside compound dimensions; give some input an axis "
            f"of size exactly {dim}"
        )


MAX_OPERANDS = 32
"""The most operands one generated expression joins. Python's compiler recurses once per
operator of a chain ``a + b + c + ...`` (a sum of 5,000 terms raised RecursionError on
the generated module); longer sums and products are built from partial results."""


def _bounded_join(values: list[str], operator: str, body: list[str]) -> str:
    """``operator.join(values)`` with at most ``MAX_OPERANDS`` operands per expression: longer
    lists are reduced in partial results (statements appended to ``body``), a tree of depth
    log_32 of their number."""
    while len(values) > MAX_OPERANDS:
        partial = []
        for start in range(0, len(values), MAX_OPERANDS):
            chunk = values[start:start + MAX_OPERANDS]
            if len(chunk) == 1:
                partial.append(chunk[0])
                continue
            name = f"p{len(body)}"
            body.append(f"{name} = {operator.join(chunk)}")
            partial.append(name)
        values = partial
    return operator.join(values)


MAX_INLINED_CALLS = 24
"""The most calls of helpers marked ``inline="always"`` (``_tanh``, ``_sigmoid``, ...) one
module may make with the helpers inlined. Numba inlines at the level of its own IR and
re-types the caller for every call site: about 0.6 s per call, more in longer functions (a
loop of 20 tanh calls took 21 s to compile inlined, 7 s called). Past this many calls the
helpers are called instead: the loops that call them no longer vectorise (tanh over 65,536
entries 0.12 -> 0.46 ms), but the compile time stays about 0.1 s per call."""

_INLINED_HELPER = re.compile(r'inline="always"\)\s*\ndef (\w+)\(')


def _helpers(helpers: str, functions: list[str]) -> str:
    """The helper functions, inlined where their calls are few (``MAX_INLINED_CALLS``)."""
    names = _INLINED_HELPER.findall(helpers)
    if not names:
        return helpers
    calls = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\(")
    if sum(len(calls.findall(f)) for f in functions) <= MAX_INLINED_CALLS:
        return helpers
    return helpers.replace(', inline="always")', ")")


MAX_DRIVER_STATEMENTS = 120
"""The most top-level statements in one driver function. Numba compiles the driver as a
whole for ``compiled=True``, in time that grows faster than linearly with its length; a
longer driver is split into parts that the driver calls in order."""

_ASSIGNED = re.compile(r"^([A-Za-z_]\w*) = ")
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")


def _driver(statements: list[str], run_args: str, dtype: str) -> list[str]:
    """The source of ``_steps`` (the driver: ``statements`` in order) and ``_steps_compiled``
    (the same, jitted). Up to ``MAX_DRIVER_STATEMENTS`` top-level statements it is one
    function; beyond, the statements go into parts ``_steps_part0, _steps_part1, ...`` that
    take the arrays earlier parts allocated and return those that later parts read."""
    header = '    """Every step in order: allocations, BLAS products, fused loops."""'
    # Top-level statements: a line that is not indented (and not an else:) starts one.
    blocks: list[list[str]] = []
    for line in statements:
        if blocks and (line.startswith((" ", "else:", "elif "))):
            blocks[-1].append(line)
        else:
            blocks.append([line])
    compiled = ["", "", "# The same steps compiled into one function: no Python between the steps,",
                "# for small arrays in training loops; compiled on first use (a few seconds)."]
    if len(blocks) <= MAX_DRIVER_STATEMENTS:
        return (["", f"def _steps({run_args}):", header, f"    dtype = {dtype}"]
                + [f"    {line}" for line in statements] + compiled
                + ['_steps_compiled = numba.njit(cache=True, error_model="numpy")(_steps)'])
    parts = [blocks[k:k + MAX_DRIVER_STATEMENTS]
             for k in range(0, len(blocks), MAX_DRIVER_STATEMENTS)]
    base = [a.strip() for a in run_args.split(",")] + ["dtype"]
    defined = [{m.group(1) for b in part for m in [_ASSIGNED.match(b[0])] if m}
               for part in parts]
    used = [set(_IDENTIFIER.findall("\n".join(line for b in part for line in b)))
            for part in parts]
    lines: list[str] = []
    calls: dict[str, list[str]] = {"": [], "_jit": []}
    for k, part in enumerate(parts):
        earlier = set().union(*defined[:k]) - set(base)
        later = set().union(*used[k + 1:])
        params = base + sorted(used[k] & earlier)
        results = sorted(defined[k] & later - set(base))
        lines += ["", "", f"def _steps_part{k}({', '.join(params)}):",
                  f'    """Steps, part {k + 1} of {len(parts)} (a long driver is split)."""']
        lines += [f"    {line}" for b in part for line in b]
        if results:
            lines.append(f"    return ({', '.join(results)},)")
        lines.append(f'_steps_part{k}_jit = numba.njit(cache=True, error_model="numpy")'
                     f"(_steps_part{k})")
        target = f"({', '.join(results)},) = " if results else ""
        for suffix in calls:
            calls[suffix].append(f"    {target}_steps_part{k}{suffix}({', '.join(params)})")
    for name, suffix in (("_steps", ""), ("_steps_driver_jit", "_jit")):
        lines += ["", "", f"def {name}({run_args}):", header, f"    dtype = {dtype}"]
        lines += calls[suffix]
    return lines + compiled + [
        '_steps_compiled = numba.njit(cache=True, error_model="numpy")(_steps_driver_jit)']


def _serial_loop_order(group: LoopGroup) -> list[int]:
    """Loop variables outermost first: the one that indexes the last (contiguous) axis of
    the most array accesses goes innermost (a column sum then runs along rows)."""
    count = [0] * len(group.dims)
    for member in group.members:
        accesses = [group.indices[id(member)]] + [at for _, at in node_reads(member)]
        for at in accesses:
            used = [v for v in at if v is not None]
            if used:
                count[used[-1]] += 1
    order = list(range(len(group.dims)))
    if not order:
        return order
    inner = max(reversed(order), key=lambda v: count[v])
    return [v for v in order if v != inner] + [inner]


def _dispatch(function: str, args: str, parallel: bool, inplace: bool = False) -> list[str]:
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


def _flip(operand: str) -> str:
    if operand.endswith(".T"):
        return operand[:-2]
    return operand + ".T"


__all__ = ["Source", "generate", "summed_labels"]
