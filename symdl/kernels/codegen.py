"""Kernel plan -> Python source: jitted loop functions and a plain-Python driver.

The driver allocates temporaries, calls NumPy's BLAS for matrix products (Numba's own
``np.dot`` would need SciPy) and the jitted loop functions for everything else. Each loop
function exists twice, serial and ``parallel=True`` (separate names: Numba's disk cache keys
on the function, not on its options). User strings never become code: arrays are
``a0, a1, ...``, dimensions ``n0, n1, ...``, and names appear only in ``ascii()`` comments.

Each step of the plan emits its own code (``Step.emit`` in ``symdl.kernels.steps``); the
``Generator`` here names arrays, reads values inside loops, writes the body of a fused loop
(one rule per node kind) and assembles the module.
"""

from __future__ import annotations

import builtins
import re
import symtable
from collections import Counter
from dataclasses import dataclass, field

import sympy as sp

from symdl import ir
from symdl.errors import UnsupportedError
from symdl.ir.rules import Rules
from symdl.kernels.driver import MAX_DRIVER_STATEMENTS, driver
from symdl.kernels.entry import argument_names, named_entry
from symdl.kernels.loops import Through
from symdl.kernels.plan import LoopGroup, Plan, RowStream, summed_labels
from symdl.kernels.scalar_code import CHECK, LITERAL, ScalarPrinter, helper_source
from symdl.kernels.scratch import hoist_scratch, scratch_function
from symdl.kernels.steps import STEP_KINDS, inside_by_range, jit_decorator


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


@dataclass
class LoopCode:
    """The code of one fused loop as it is written: lines before the loops, the loop body,
    lines after, and the arrays the loop reads or writes (its function's parameters)."""

    group: LoopGroup
    loop_vars: list[str]
    temps: dict[int, str]
    """Node id -> the loop temporary holding its value at the current iteration."""
    through: dict[str, str]
    """``outK -> aI``: outputs written through the array of an input (in-place variants)."""
    before: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    arrays: set[str] = field(default_factory=set)
    temp_at: dict[int, tuple] = field(default_factory=dict)
    """Node id -> the loop variables its temporary is computed at."""
    scalar_locals: dict[str, str] | None = None
    """Scalars computed by earlier steps, read into locals before the loops (array -> local)."""
    members: set[int] = field(default_factory=set)
    """Ids of the loop's members (a scalar one of them is no earlier step's)."""


def generate(plan: Plan, leaves: list[ir.Leaf], title: str) -> Source:
    """The Python source of a kernel module for ``plan``."""
    return Generator(plan, leaves, title).source()


def unbound_names(text: str) -> set[str]:
    """The global names that functions of the module ``text`` read but neither the module
    nor Python's builtins define (a NameError waiting for the first call)."""
    module = symtable.symtable(text, "<kernel>", "exec")
    defined = {s.get_name() for s in module.get_symbols()
               if s.is_assigned() or s.is_imported()} | set(dir(builtins))
    unbound: set[str] = set()
    tables = list(module.get_children())
    while tables:
        table = tables.pop()
        tables += table.get_children()
        unbound |= {s.get_name() for s in table.get_symbols()
                    if s.is_referenced() and s.is_global() and s.get_name() not in defined}
    return unbound


class Generator:
    """Names and reads for the code of one kernel module; the steps emit through it."""

    def __init__(self, plan: Plan, leaves: list[ir.Leaf], title: str):
        self.plan = plan
        self.leaves = sorted(leaves, key=lambda leaf: leaf.name)
        self.title = title
        self.arrays: dict[int, str] = {}
        for k, leaf in enumerate(self.leaves):
            self.arrays[id(leaf)] = f"a{k}"
        # Output names as plain strings: a typed output key is written as its spelling.
        self.outputs = [str(name) for name in plan.roots]
        for k, name in enumerate(self.outputs):
            node = plan.roots[name]
            self.arrays.setdefault(id(node), f"out{k}")
        self._roots = {id(n) for n in plan.roots.values()}
        self.in_place = self._in_place_outputs()
        """``outK -> aI`` for each output that may be written into input ``aI`` (same name)."""
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

    def _in_place_outputs(self) -> dict[str, str]:
        leaf_named = {leaf.name: leaf for leaf in self.leaves}
        in_place = {}
        for k, name in enumerate(self.outputs):
            leaf = leaf_named.get(name)
            if (leaf is not None and leaf.rank
                    and self.arrays[id(self.plan.roots[name])] == f"out{k}"
                    and self.plan.in_place_safe(name, leaf)):
                in_place[f"out{k}"] = self.arrays[id(leaf)]
        return in_place

    # -- naming and reading -----------------------------------------------------------

    def array_of(self, node: ir.Node) -> str:
        if id(node) not in self.arrays:
            self.arrays[id(node)] = self.namer.temp(node, "m")
        return self.arrays[id(node)]

    def is_root(self, node: ir.Node) -> bool:
        """Whether ``node`` is an output (written into the caller's array)."""
        return id(node) in self._roots

    def size(self, dim: sp.Expr) -> str:
        return ScalarPrinter(self.dim_names, integers=True).doprint(sp.sympify(dim))

    def shape_tuple(self, node: ir.Node) -> str:
        sizes = [f"int({self.size(d)})" for d in node.shape] or ["1"]
        return "(" + ", ".join(sizes) + ",)"

    def constant(self, value: sp.Expr) -> str:
        return ScalarPrinter(self.dim_names).doprint(sp.sympify(value))

    def loop_constant(self, value: sp.Expr) -> str:
        """``constant`` inside a loop function: in the loop's element type (``LITERAL``)."""
        return ScalarPrinter(self.typed_dims(), literal=LITERAL).doprint(sp.sympify(value))

    def typed_dims(self) -> dict[sp.Symbol, str]:
        """Dimension names as values of the loop's element type (an int64 size times a
        float32 is a float64 in Numba)."""
        return {d: f"{LITERAL}({name})" for d, name in self.dim_names.items()}

    def element_type(self, arrays: list[str], scalar: bool = False) -> str:
        """The line that binds ``LITERAL`` to the element type of a loop function's arrays
        (the first of ``arrays`` that is an array of the kernel's dtype: scalar inputs come
        as Python floats). Every constant and scalar input of the loop goes through it, so a
        float32 kernel computes in float32 and a float64 one in float64. A loop without
        dimensions (``scalar``: it computes a few numbers once) computes in float64 and
        rounds once when it stores: Adam's ``1 - beta2**t`` in float32 is 1.3e-5 off at
        t = 1 (PyTorch computes it in double too)."""
        scalars = {self.arrays[id(leaf)] for leaf in self.leaves if leaf.rank == 0}
        source = next((a for a in arrays if a not in scalars), None)
        if scalar or source is None:
            return f"{LITERAL} = float"
        return f"{LITERAL} = {source}.dtype.type"

    def read(self, node: ir.Node, at: tuple, loop: LoopCode) -> str:
        """The value of ``node`` at loop variables ``at`` inside a loop body."""
        if isinstance(at, Through):
            return self.read_through(node, at, loop)
        if id(node) in loop.temps:
            own = loop.temp_at.get(id(node), at)
            if own != at:
                # The loop's temporary holds the entry at ``own``; reading it for another
                # entry is a wrong number, so a plan that asks for it must never run.
                raise RuntimeError(
                    f"symdl internal error: a loop reads a value it computes at {own} at {at};"
                    " please report this definition")
            return loop.temps[id(node)]
        constant = _CONSTANT_READS.get(type(node))
        if constant is not None:
            return constant(node, [loop.loop_vars[v] if v is not None else "0" for v in at])
        if ir.is_scalar_constant(node):
            return self.loop_constant(node.coeff)
        name = self.array_of(node)
        if node.rank == 0:
            if isinstance(node, ir.Leaf):  # a Python float: a float64 in Numba
                return f"{LITERAL}({name})"
            return f"{loop.through.get(name, name)}[0]"
        return f"{loop.through.get(name, name)}[{_index(at, loop.loop_vars)}]"

    def read_tracked(self, op: ir.Node, at: tuple, loop: LoopCode) -> str:
        """``read``, noting the array read among the loop's parameters."""
        if (loop.scalar_locals is not None and op.rank == 0 and not isinstance(op, ir.Leaf)
                and id(op) in self.arrays and id(op) not in loop.temps
                and id(op) not in loop.members):
            name = self.arrays[id(op)]
            loop.arrays.add(name)
            return loop.scalar_locals.setdefault(name, f"{name}_0")
        text = self.read(op, at, loop)
        if id(op) in self.arrays and id(op) not in loop.temps:
            loop.arrays.add(self.arrays[id(op)])
        return text

    # -- fused loops ------------------------------------------------------------------

    def loop_code(self, group: LoopGroup, loop_vars: list[str], temps: dict[int, str],
                  write_through: dict[str, str] | None = None) -> LoopCode:
        """The code of ``group``'s loop; ``temps`` may name values the caller computes in the
        body itself; ``write_through`` writes outputs into inputs' arrays (in-place)."""
        loop = LoopCode(group, loop_vars, temps, dict(write_through or {}))
        loop.members = {id(m) for m in group.members}
        # Scalars computed by earlier steps are read once, before the loops, into locals:
        # read as m0[0] inside the loop, LLVM must reload them after every store to an output
        # it cannot prove distinct, and the loop does not vectorise.
        if group.dims:
            loop.scalar_locals = {}
        seen: set[int] = set()
        for node in group.members:
            # A member listed twice (an input map recomputed for two readers) is emitted once:
            # emitting it again reused the next temporary's name and clobbered it.
            if id(node) in seen:
                continue
            seen.add(id(node))
            value = _MEMBER_CODE(node, self, loop)
            if id(node) in group.reductions:
                self._accumulate(node, value, loop)
            else:
                self._assign(node, value, loop)
        locals_ = (loop.scalar_locals or {}).items()
        loop.before[:0] = [f"{local} = {loop.through.get(name, name)}[0]"
                           for name, local in locals_]
        return loop

    def _accumulate(self, node: ir.Node, value: str, loop: LoopCode) -> None:
        target = self.array_of(node)
        loop.arrays.add(target)
        written = loop.through.get(target, target)
        at = loop.group.indices[id(node)]
        if all(v is None for v in at):
            # A whole-array sum (a loss over the batch) accumulates in float64 whatever the
            # kernel's dtype: the MSE of 10^5 float32 terms is then 7e-9 off (the rounding of
            # the result), a float32 running sum 3e-6, growing with n. The terms themselves
            # are float32 and the loop still vectorises (each lane widened as it is added).
            acc = f"acc{len(loop.before)}"
            loop.before.append(f"{acc} = 0.0")
            loop.body.append(f"{acc} += {value}")
            zeros = ", ".join("0" for _ in range(max(node.rank, 1)))
            loop.after.append(f"{written}[{zeros}] = {acc}")
        else:
            loop.before.append(f"{written}[...] = 0.0")
            loop.body.append(f"{written}[{_index(at, loop.loop_vars)}] += {value}")

    def _assign(self, node: ir.Node, value: str, loop: LoopCode) -> None:
        temp = f"t{len(loop.temps)}"
        loop.body.append(f"{temp} = {value}")
        loop.temps[id(node)] = temp
        at = loop.group.indices[id(node)]
        loop.temp_at[id(node)] = at
        if id(node) in loop.group.stores:
            target = self.array_of(node)
            loop.arrays.add(target)
            index = _index(at, loop.loop_vars) or "0"
            loop.body.append(f"{loop.through.get(target, target)}[{index}] = {temp}")

    def stream_function(self, step: RowStream, number: int) -> str:
        """Adds ``_stream<number>``, the serial form of a row stream; returns its arguments."""
        X, z, g = step.matrix, step.first.node, step.second.node
        vector, r = step.vector, step.residual
        loop = self.loop_code(step.group, ["i0"], {id(z): "zi"})
        rv = loop.temps.get(id(r)) or self.read(r, (0,), loop)

        def at(spec, labels):
            return ", ".join(labels.get(lab, "0") for lab in spec)

        xs = self.array_of(X)
        first_spec = dict(zip(step.first.node.operands, step.first.node.specs, strict=True))
        x_index = at(first_spec[X], {step.rows: "i0", step.cols: "j"})
        v_index = at(first_spec[vector], {step.cols: "j"})
        z_index = at(z.out, {step.rows: "i0"})
        g_index = at(g.out, {step.cols2: "j"})
        coeff = self.loop_constant(g.coeff)
        arrays = sorted(loop.arrays | {xs, self.array_of(vector), self.array_of(z),
                                       self.array_of(g)})
        header = ", ".join(arrays + [self.dim_names[d] for d in self.dims])
        row_axis = first_spec[X].index(step.rows)  # X may be read transposed (X^T v)
        rows, cols = self.size(X.shape[row_axis]), self.size(X.shape[1 - row_axis])
        # Blocks of rows that fit in L2 (256 KB of X): X is read from memory once, the row
        # products and the pointwise part each run as their own loop over the block (the
        # pointwise loop vectorises across rows), then X^T r re-reads the block from cache.
        lines = [jit_decorator(parallel=False),
                 f"def _stream{number}({header}):",
                 f"    {self.element_type([xs])}",
                 f"    {self.array_of(g)}[...] = 0.0",
                 *(f"    {s}" for s in loop.before),
                 f"    block = max(1, min(256, 32768 // max(int({cols}), 1)))",
                 f"    rbuf = np.empty(block, {xs}.dtype)",
                 f"    for b0 in range(0, int({rows}), block):",
                 f"        b1 = min(b0 + block, int({rows}))",
                 "        for i0 in range(b0, b1):",
                 f"            zi = {LITERAL}(0.0)",  # a row product, in the dtype as in BLAS
                 f"            for j in range(int({cols})):",
                 f"                zi += {xs}[{x_index}] * {self.array_of(vector)}[{v_index}]",
                 f"            {self.array_of(z)}[{z_index}] = zi",
                 "        for i0 in range(b0, b1):",
                 f"            zi = {self.array_of(z)}[{z_index}]",
                 *(f"            {s}" for s in loop.body),
                 f"            rbuf[i0 - b0] = {coeff} * {rv}",
                 "        for i0 in range(b0, b1):",
                 "            ri = rbuf[i0 - b0]",
                 f"            for j in range(int({cols})):",
                 f"                {self.array_of(g)}[{g_index}] += {xs}[{x_index}] * ri",
                 *(f"    {s}" for s in loop.after), ""]
        self.functions.append("\n".join(lines))
        return header

    # -- the module ---------------------------------------------------------------------

    def source(self) -> Source:
        dim_args = [self.dim_names[d] for d in self.dims]
        statements, scratch = hoist_scratch(self._steps() + self._output_copies(), dim_args)
        indices = index_bounds(self.plan.roots.values())
        inputs = [leaf.name for leaf in self.leaves]
        args = [self.arrays[id(leaf)] for leaf in self.leaves]
        outs = [f"out{k}" for k in range(len(self.outputs))]
        text = self._docstring(inputs).replace("\\", "\\\\").replace('"', "\\x22")
        lines = ['"""' + text + '\n"""', "", "import math", "", "import numba",
                 "import numpy as np", "from numba import prange", "",
                 _helpers(helper_source(self.functions), self.functions), CHECK, ""]
        if indices:
            lines += [INDEX_CHECK, ""]
        lines += ["\n".join(["", f.rstrip(), ""]) for f in self.functions]
        signature = ", ".join(args + outs)
        arrays = [self.arrays[id(leaf)] for leaf in self.leaves
                  if leaf.rank and id(leaf) not in indices]
        dtype_src = arrays[0] if arrays else "out0"
        run_args = ", ".join(args + outs + [name for name, _ in scratch] + dim_args
                             + ["parallel", "inplace"])
        lines += driver(statements, run_args, f"{dtype_src}.dtype")
        if scratch:
            lines += scratch_function(scratch, dim_args)
        lines += ["", "", f"def kernel({signature}, parallel=False, compiled=False, "
                  "inplace=False, scratch=None):",
                  '    """Checks the arrays, then computes every output into the preallocated'
                  ' out arrays',
                  "    (temporaries from the pool scratch= when given: ScratchPool in "
                  'symdl.kernels.scratch)."""',
                  f"    dtype = {dtype_src}.dtype"]
        lines += [f"    {line}" for line in self._checks()]
        lines += _scratch_call(scratch, dim_args, run_args)
        in_place = [self.outputs[int(o[3:])] for o in sorted(self.in_place_written)]
        lines += named_entry(self, [(int(o[3:]), int(self.in_place[o][1:]))
                                    for o in sorted(self.in_place_written)])
        if indices:
            lines += index_arguments(self, [leaf for leaf in self.leaves if id(leaf) in indices])
        text = "\n".join(lines)
        unbound = unbound_names(text)
        if unbound:  # a step emitted a name it never bound: fail here, not at the first call
            raise AssertionError(f"generated kernel reads undefined names {sorted(unbound)}")
        return Source(text, inputs, self.outputs, self.dims, in_place)

    def _steps(self) -> list[str]:
        """The driver's statements: each step's allocations, then its code."""
        statements: list[str] = []
        allocated: set[int] = set()
        for k, step in enumerate(self.plan.steps):
            for node in step.computed():
                if (id(node) in self.plan.materialized and not self.is_root(node)
                        and id(node) not in allocated):
                    allocated.add(id(node))
                    statements.append(f"{self.array_of(node)} = np.empty("
                                      f"{self.shape_tuple(node)}, dtype=dtype)")
            statements += step.emit(self, k)
        return statements

    def _output_copies(self) -> list[str]:
        copies = []
        for k, name in enumerate(self.outputs):
            node = self.plan.roots[name]
            # A constant output (a zero or constant Hessian block) has no step writing it.
            if ir.is_zero(node):
                copies.append(f"out{k}[...] = 0.0")
            elif ir.is_scalar_constant(node):
                copies.append(f"out{k}[...] = {self.constant(node.coeff)}")
            elif self.arrays[id(node)] != f"out{k}":
                copies.append(f"out{k}[...] = {self.arrays[id(node)]}")
        return copies

    def _checks(self) -> list[str]:
        checks: list[str] = []
        for d in self.dims:
            checks.append(f"{self.dim_names[d]} = {self._dim_from_arrays(d)}  # {ascii(str(d))}")
        # Shape checks: the loops below index without bounds checks, so they must hold.
        bounds = index_bounds(self.plan.roots.values())
        for leaf in self.leaves:
            if leaf.rank:
                name = self.arrays[id(leaf)]
                shape = self.shape_tuple(leaf)
                if id(leaf) in bounds:  # an integer index array: its values checked too
                    checks.append(index_check(self, leaf, bounds[id(leaf)]))
                    continue
                checks.append(f"_check({name}, {shape}, dtype, {ascii(leaf.name)})")
        for k, name in enumerate(self.outputs):
            node = self.plan.roots[name]
            checks.append(f"_check(out{k}, {self.shape_tuple(node)}, dtype, {ascii(str(name))})")
        return checks

    def _docstring(self, inputs: list[str]) -> str:
        steps = self.plan.steps
        counts = Counter(step.summary for step in steps)
        # Each kind by its own name (a row stream or a solve is no softmax pass).
        kinds = ", ".join(f"{counts[kind.summary]} {kind.summary}" for kind in STEP_KINDS
                          if counts[kind.summary])
        flops = sp.expand(sp.Add(*(step.flops() for step in steps)))
        # ascii() keeps quotes: a name holding three double quotes would close the docstring.
        return "\n".join([
            "Generated by symdl. Do not edit: regenerate it from the definition.",
            "",
            f"Definition: {ascii(self.title)}",
            "Entry point: compute(*, ...), every input by keyword (its docstring lists them);",
            "kernel(a0, a1, ..., out0, out1, ...) is the low-level form symdl itself calls.",
            "Arguments (a0, a1, ...): " + ", ".join(ascii(n) for n in inputs),
            "Outputs (out0, out1, ...): " + ", ".join(ascii(str(n)) for n in self.outputs),
            "Dimensions (n0, n1, ...): " + ", ".join(ascii(str(d)) for d in self.dims),
            f"Steps: {len(steps)}" + (f" ({kinds})" if kinds else ""),
            f"Floating-point operations, about: {flops}",
        ])

    def _dim_from_arrays(self, dim: sp.Symbol) -> str:
        for leaf in self.leaves:
            for axis, d in enumerate(leaf.shape):
                if d == dim:
                    return f"{self.arrays[id(leaf)]}.shape[{axis}]"
        raise UnsupportedError(
            f"dimension {dim} appears only inside compound dimensions; give some input an axis "
            f"of size exactly {dim}"
        )

    # -- recurrences ----------------------------------------------------------------------

    def scan_code(self, step, number: int) -> list[str]:
        """The driver's lines for a recurrence (``steps.ScanStep``): its step planned and
        generated once, as a kernel of its own over placeholders, inside a loop over ``t``.
        The step's names get the suffix ``_r<number>`` so that they cannot meet the outer
        kernel's."""
        from symdl.ir import rewrites
        from symdl.kernels import plan as planning

        node = step.node
        suffix = f"_r{number}"
        inner_closure = ir.closure_of(node.body_roots(), node.placeholders())
        stand_ins: dict[int, ir.Node] = {}
        outer_of: dict[int, ir.Node] = {}
        for k, (inner, outer) in enumerate(zip(inner_closure, node.closure, strict=True)):
            if isinstance(inner, (ir.Ones, ir.Zero, ir.Identity)) or ir.is_scalar_constant(inner):
                continue  # a constant stays in the step's own code
            leaf = ir.leaf(f"_closure{k}", inner.shape, sp.Symbol(f"_closure{k}"))
            stand_ins[id(inner)] = leaf
            outer_of[id(leaf)] = outer
        roots = rewrites.exact(ir.substitute(node.body_roots(), stand_ins))
        m = len(node.carry)
        steps_in, emit = roots[:m], roots[m]
        emitted = next((j for j, s in enumerate(node.step) if s is node.emit), None)
        outputs: dict[str, ir.Node] = {f"s{j}": s for j, s in enumerate(steps_in)}
        if node.mode != "final" and emitted is None:
            outputs["e"] = emit
        sub_plan = planning.plan(outputs)
        leaves = [n for n in ir.topological_order(list(sub_plan.roots.values()))
                  if isinstance(n, ir.Leaf)]
        leaves += [p for p in node.placeholders() if p not in leaves]
        sub = Generator(sub_plan, leaves, "")
        statements = sub._steps() + sub._output_copies()
        step.body_flops = sp.Add(*(s.flops() for s in sub_plan.steps))
        functions = "\n\n".join(sub.functions)
        defined = re.findall(r"^def (\w+)\(", functions, re.MULTILINE)
        for name in defined:
            pattern = re.compile(rf"\b{re.escape(name)}\b")
            functions = pattern.sub(name + suffix, functions)
            statements = [pattern.sub(name + suffix, s) for s in statements]
        keep = {name + suffix for name in defined}
        statements = [_suffixed(s, suffix, keep) for s in statements]
        # A step's loops are small (one time step) and run T times: a parallel loop would
        # start threads at every step (4 ms each at T = 1000); the step's loops run serially.
        statements = [re.sub(r"\bparallel\b", "False", s) for s in statements]
        self.functions.append(functions)

        def inner_name(n: ir.Node) -> str:
            return sub.arrays[id(n)] + suffix

        lines = [f"# recurrence {number}: {ascii(node.mode)} over t = 1..{ascii(str(node.length))}"
                 + (", backwards" if node.reverse else "")]
        for d, name in sub.dim_names.items():
            lines.append(f"{name}{suffix} = {self.size(d)}")
        for leaf in leaves:
            if id(leaf) in outer_of:
                lines.append(f"{inner_name(leaf)} = {self._scan_array(outer_of[id(leaf)], lines)}")
        out = self.array_of(node)
        t = f"t{number}"
        length = f"int({self.size(node.length)})"
        carries = [f"carry{number}_{j}" for j in range(m)]
        spares = [f"next{number}_{j}" for j in range(m)]
        # One state written straight into the stored sequence, and read back from it.
        direct = m == 1 and node.mode == "stack" and emitted == 0 and not node.reverse
        for j, c in enumerate(node.carry):
            lines += [f"{carries[j]} = np.empty({self.shape_tuple(c)}, dtype=dtype)",
                      f"{carries[j]}[...] = {self._scan_array(node.init[j], lines)}"]
            if not direct:
                lines.append(f"{spares[j]} = np.empty({self.shape_tuple(c)}, dtype=dtype)")
        summed = f"term{number}"
        if node.mode == "sum":
            lines += [f"{out}[...] = 0.0",
                      f"{summed} = np.empty({self.shape_tuple(node.emit)}, dtype=dtype)"]
        bounds = {id(s): self._scan_array(b, lines) for s, b in zip(node.slots, node.bounds,
                                                                   strict=True) if b is not None}
        order = f"range({length} - 1, -1, -1)" if node.reverse else f"range({length})"
        body = []
        for slot, seq, lag in zip(node.slots, node.seqs, node.lags, strict=True):
            if slot not in leaves:
                continue
            seq_array = self._scan_array(seq, lines)
            if lag == 0:
                body.append(f"{inner_name(slot)} = {seq_array}[{t}]")
            else:
                body += [f"if {t} > 0:", f"    {inner_name(slot)} = {seq_array}[{t} - 1]",
                         "else:", f"    {inner_name(slot)} = {bounds[id(slot)]}"]
        for j, c in enumerate(node.carry):
            if c in leaves:
                body.append(f"{inner_name(c)} = {carries[j]}")
        targets = {f"s{j}": spares[j] for j in range(m)}
        if direct:
            targets["s0"] = f"{out}[{t}]"
        targets["e"] = f"{out}[{t}]" if node.mode == "stack" else summed
        for k, key in enumerate(sub_plan.roots):
            body.append(f"out{k}{suffix} = {targets[key]}")
        body += statements
        if node.mode == "stack" and emitted is not None and not direct:
            body.append(f"{out}[{t}] = {spares[emitted]}")
        if direct:
            body.append(f"{carries[0]} = {out}[{t}]")
        else:
            for j in range(m):
                body.append(f"{carries[j]}, {spares[j]} = {spares[j]}, {carries[j]}")
        if node.mode == "sum":
            body.append(f"{out} += {summed}")
        lines.append(f"for {t} in {order}:")
        lines += [f"    {s}" for s in body]
        if node.mode == "final":
            lines.append(f"{out}[...] = {carries[node.carry.index(node.emit)]}")
        return lines

    def _scan_array(self, node: ir.Node, lines: list[str]) -> str:
        """An array holding ``node`` for a recurrence: its own, or one filled now with a
        constant (a zero initial state)."""
        if isinstance(node, (ir.Ones, ir.Zero)) or ir.is_scalar_constant(node):
            name = self.namer.temp(node, "c")
            value = ("1.0" if isinstance(node, ir.Ones) else "0.0" if ir.is_zero(node)
                     else self.constant(node.coeff))
            lines += [f"{name} = np.empty({self.shape_tuple(node)}, dtype=dtype)",
                      f"{name}[...] = {value}"]
            return name
        return self.array_of(node)


def _index(at: tuple, loop_vars: list[str]) -> str:
    return ", ".join(loop_vars[v] if v is not None else "0" for v in at)


def _identity_read(node: ir.Identity, index: list[str]) -> str:
    a, b = index
    return f"({LITERAL}(1.0) if {a} == {b} else {LITERAL}(0.0))"


_CONSTANT_READS = {
    ir.Ones: lambda node, index: f"{LITERAL}(1.0)",
    ir.Zero: lambda node, index: f"{LITERAL}(0.0)",
    ir.Identity: _identity_read,
}
"""Nodes read inside a loop without an array: their value at loop variables ``index``."""


# -- loop code: one rule per kind of loop member ----------------------------------------

def _einsum_code(node: ir.Einsum, gen: Generator, loop: LoopCode) -> str:
    factors = [gen.loop_constant(node.coeff)] if node.coeff != 1 else []
    for op, at in loop.group.reads_of(node):
        factors.append(gen.read_tracked(op, at, loop))
    one = f"{LITERAL}(1.0)"
    factors = [f for f in factors if f != one] or [one]
    return _bounded_join(factors, " * ", loop.body)


def _operand_values(node: ir.Node, gen: Generator, loop: LoopCode) -> list[str]:
    return [gen.read_tracked(op, at, loop) for op, at in loop.group.reads_of(node)]


def _add_code(node: ir.Add, gen: Generator, loop: LoopCode) -> str:
    return _bounded_join(_operand_values(node, gen, loop), " + ", loop.body)


def _map_code(node: ir.Map, gen: Generator, loop: LoopCode) -> str:
    names = {}
    values = _operand_values(node, gen, loop)
    for var, value in zip(node.fn.variables, values, strict=True):
        temp = f"x{len(loop.body)}_{len(names)}"
        loop.body.append(f"{temp} = {value}")
        names[var] = temp
    names.update(gen.typed_dims())
    return ScalarPrinter(names, literal=LITERAL).doprint(node.fn.expr)


def _row_statistics(node: ir.LogSumExp | ir.Softmax, gen: Generator, loop: LoopCode
                    ) -> tuple[str, str, str]:
    """(peak, total, row) of the row statistics ``node`` reads, at the loop's row."""
    peak, total = gen.stats[(id(node.arg), node.axis)]
    loop.arrays.update((peak, total))
    if node.rank != 2:  # statistics of the tensor's shape with size 1 along the axis
        variables = loop.group.indices[id(node)]
        at = [loop.loop_vars[v] if v is not None and k != node.axis else "0"
              for k, v in enumerate(variables)]
        return peak, total, ", ".join(at)
    lane_axis = 0 if node.axis == 1 else 1
    v = loop.group.indices[id(node)][lane_axis]
    return peak, total, loop.loop_vars[v] if v is not None else "0"


def _logsumexp_code(node: ir.LogSumExp, gen: Generator, loop: LoopCode) -> str:
    _operand_values(node, gen, loop)  # notes the argument's array among the parameters
    peak, total, row = _row_statistics(node, gen, loop)
    return f"({peak}[{row}] + math.log({total}[{row}]))"


def _softmax_code(node: ir.Softmax, gen: Generator, loop: LoopCode) -> str:
    (value,) = _operand_values(node, gen, loop)
    peak, total, row = _row_statistics(node, gen, loop)
    # A lane with a finite entry sums to at least 1 (its maximum is exp(0)); a fully masked
    # one sums to 0 and is all zeros, not 0/0.
    one = gen.loop_constant(sp.Integer(1))
    return f"(_exp({value} - {peak}[{row}]) / max({total}[{row}], {one}))"


def _not_a_loop_member(node: ir.Node, gen: Generator, loop: LoopCode) -> str:
    raise TypeError(f"symdl internal error: no loop code for {type(node).__name__}")


_MEMBER_CODE = Rules("loop code", {
    ir.Einsum: _einsum_code,
    ir.Add: _add_code,
    ir.Map: _map_code,
    ir.LogSumExp: _logsumexp_code,
    ir.Softmax: _softmax_code,
    # Values are read, not computed; a solve is a step of its own; names are lowered away.
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Solve, ir.Det, ir.Named):
        _not_a_loop_member,
})


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


TABLES = (_MEMBER_CODE,)
"""The rule tables of this module (their coverage of every node kind is tested)."""

__all__ = ["MAX_DRIVER_STATEMENTS", "MAX_OPERANDS", "Generator", "LoopCode", "Source",
           "generate", "summed_labels"]


_MEMBER_CODE.register(ir.MatrixFunction)(_not_a_loop_member)  # a step of its own



# -- computed positions (symdl.ir.indexed) ----------------------------------------------


def _new_loop(self: Generator, group: LoopGroup, loop_vars: list[str]) -> LoopCode:
    """An empty loop's code, for a step that writes its own loop around the reads."""
    loop = LoopCode(group, loop_vars, {}, {})
    if group.dims:
        loop.scalar_locals = {}
    return loop


def _affine_text(self: Generator, m, names: list[str]) -> str:
    """The position ``m`` as integer code, from the position of each axis (``names``)."""
    terms = []
    for c, name in zip(m.coeffs, names, strict=True):
        if c == 0 or name == "0":
            continue
        terms.append(name if c == 1 else f"{self.size(c)} * {name}")
    text = " + ".join(terms)
    offset = sp.sympify(m.offset)
    if offset.is_negative and terms:
        text += f" - {self.size(-offset)}"
    elif offset != 0 or not terms:
        text = " + ".join([*terms, self.size(offset)])
    return text if len(terms) <= 1 and offset == 0 or not terms else f"({text})"


def _read_through(self: Generator, node: ir.Node, where: Through, loop: LoopCode) -> str:
    """``node`` read through windows and gathers (``where.chain``) at loop variables
    ``where.at``: the positions are computed inline, each window's with a bounds check (0
    outside), each gather's from its index array (validated before any loop runs). One
    expression, so that a position is read only once the checks before it have passed."""
    names = [loop.loop_vars[v] if v is not None else "0" for v in where.at]
    conds: list[str] = []
    for depth, link in enumerate(where.chain):
        if isinstance(link, ir.Take):
            s = link.indices.rank
            idx = self.array_of(link.indices)
            loop.arrays.add(idx)
            names = [f"{idx}[{', '.join(names[:s])}]", *names[s:]]
            continue
        spaces = [loop.group.dims[v] if v is not None else 1 for v in where.at]
        positions = []
        for j, m in enumerate(link.index):
            pos = self.affine_text(m, names)
            bound = sp.sympify(link.arg.shape[j])
            # At the first window the variables' ranges are the loop's: a position that
            # provably stays inside (no padding on this axis) needs no check.
            if depth != 0 or not inside_by_range(m, spaces, bound):
                conds.append(f"0 <= {pos} < {self.size(bound)}")
            positions.append(pos)
        names = positions
    constant = _CONSTANT_READS.get(type(node))
    if constant is not None:
        value = constant(node, names)
    elif ir.is_scalar_constant(node):
        value = self.constant(node.coeff)
    else:
        name = self.array_of(node)
        loop.arrays.add(name)
        array = loop.through.get(name, name)
        if node.rank == 0:
            value = name if isinstance(node, ir.Leaf) else f"{array}[0]"
        else:
            value = f"{array}[{', '.join(names)}]"
    if not conds:
        return value
    return f"({value} if {' and '.join(conds)} else 0.0)"


# Methods of the Generator for the steps of computed positions, defined after the class so that
# this module's existing code stays as it was.
Generator.new_loop = _new_loop
Generator.affine_text = _affine_text
Generator.read_through = _read_through


def _scratch_call(scratch: list[tuple[str, str]], dim_args: list[str], run_args: str
                  ) -> list[str]:
    """``kernel()``'s call of the driver: with the temporaries of ``_scratch`` taken from the
    caller's pool (and given back after the call) or, without a pool, allocated for the call."""
    steps = f"    (_steps_compiled if compiled else _steps)({run_args})"
    if not scratch:
        return [steps]
    names = ", ".join(name for name, _ in scratch)
    sizes = ", ".join([*dim_args, "dtype"])
    return [f"    layout = ({sizes},)",
            f"    temporaries = _scratch({sizes}) if scratch is None else scratch.take("
            f"layout, _scratch, {sizes})",
            f"    ({names},) = temporaries",
            "    try:",
            "    " + steps,
            "    finally:",
            "        if scratch is not None:",
            "            scratch.give(layout, temporaries)"]


def _inline_read_code(node: ir.Node, gen: Generator, loop: LoopCode) -> str:
    # A window or gather stored into its own array (an output, or read by a BLAS product).
    op, at = loop.group.reads_of(node)[0]
    return gen.read_tracked(op, at, loop)


def _max_stats(node: ir.Node, gen: Generator, loop: LoopCode) -> tuple[str, str, str, str]:
    """(maxima, first arg maxima, the index of this entry's row in them, the divisor that
    takes a stored flat position over a pooling window to this axis: ``RowMax``)."""
    peak, first, divisor = gen.stats[("max", id(node.arg), node.axis)]
    loop.arrays.update((peak, first))
    at = list(loop.group.indices[id(node)])
    at[node.axis] = None
    return peak, first, _index(tuple(at), loop.loop_vars) or "0", divisor


def _max_code(node: ir.Max, gen: Generator, loop: LoopCode) -> str:
    peak, _, row, _ = _max_stats(node, gen, loop)
    return f"{peak}[{row}]"


def _argmax_mask_code(node: ir.ArgMaxMask, gen: Generator, loop: LoopCode) -> str:
    _, first, row, divisor = _max_stats(node, gen, loop)
    v = loop.group.indices[id(node)][node.axis]
    here = loop.loop_vars[v] if v is not None else "0"
    position = f"{first}[{row}]" if divisor == "1" else f"({first}[{row}] // ({divisor}))"
    return f"(1.0 if {here} == {position} else 0.0)"


_MEMBER_CODE.register(ir.AffineRead, ir.Take)(_inline_read_code)
_MEMBER_CODE.register(ir.Max)(_max_code)
_MEMBER_CODE.register(ir.ArgMaxMask)(_argmax_mask_code)
# A scatter is a step of its own (steps.ScatterLoop), never a member of a fused loop.
_MEMBER_CODE.register(ir.AffineScatter, ir.TakeAdjoint)(_not_a_loop_member)


# -- integer index arrays (the positions a gather reads, a scatter-add writes) -------------


def index_bounds(roots) -> dict[int, list[sp.Expr]]:
    """Leaf id -> the row counts its values index (each ``Take``'s table, each
    ``TakeAdjoint``'s rows), for every integer index array under ``roots``.

    Raises:
        UnsupportedError: an index array that is not an input of the kernel.
    """
    found: dict[int, list[sp.Expr]] = {}
    for node in ir.topological_order(list(roots)):
        if not isinstance(node, (ir.Take, ir.TakeAdjoint)):
            continue
        indices = node.indices
        if not isinstance(indices, ir.Leaf) or indices.rank == 0:
            raise UnsupportedError(
                "the positions of a gather (an embedding's indices) must be an input array "
                "of integers with at least one axis; computed or scalar positions cannot be "
                "compiled: pass them as an array argument")
        rows = node.table.shape[0] if isinstance(node, ir.Take) else node.rows
        bounds = found.setdefault(id(indices), [])
        if rows not in bounds:
            bounds.append(rows)
    return found


def index_check(gen: Generator, leaf: ir.Leaf, bounds: list[sp.Expr]) -> str:
    """The line of ``kernel()`` that checks an index array's shape, dtype and values."""
    rows = ", ".join(f"int({gen.size(b)})" for b in bounds)
    return (f"_check_index({gen.arrays[id(leaf)]}, {gen.shape_tuple(leaf)}, min(({rows},)), "
            f"{ascii(leaf.name)})")


INDEX_CHECK = '''
def _check_index(array, shape, rows, name):
    """An index array: its shape, an integer dtype, and every value in 0 .. rows - 1 (the
    loops read and write at these positions without bounds checks)."""
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    if array.dtype.kind not in "iu" or array.dtype.itemsize > 8:
        raise KernelArgumentError(
            f"{name} holds row positions and must be an integer array (int32 or int64), "
            f"got {array.dtype}: pass {name}.astype(np.int64)", name, "int64", array.dtype)
    bad = (array < 0) | (array >= rows)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KernelArgumentError(
            f"{name}[{', '.join(map(str, where))}] = {array[where]} is outside 0 .. "
            f"{rows - 1}: the table it indexes has {rows} rows", name, rows, int(array[where]))
'''
"""The check of an index array in a kernel module (``KernelArgumentError`` is the module's
own, defined with ``compute``)."""


def index_arguments(gen: Generator, leaves: list[ir.Leaf]) -> list[str]:
    """Lines that make ``compute()`` take integer arrays for the index arrays ``leaves``
    (every other argument is a float array)."""
    keywords = argument_names([leaf.name for leaf in gen.leaves])
    names = tuple(keywords[leaf.name] for leaf in leaves)
    return ["", "", f"_INDEX_ARGUMENTS = {names!r}  # integer arrays: positions of rows",
            "_float_argument = _argument", "", "",
            "def _argument(keyword, rank, value, dtype):  # noqa: F811 - index arrays too",
            '    """One input: an index array as a C-ordered integer array, else as before."""',
            "    if keyword not in _INDEX_ARGUMENTS:",
            "        return _float_argument(keyword, rank, value, dtype)",
            "    array = np.asarray(value)",
            "    if array.dtype.kind not in \"iu\" or array.ndim != rank or 0 in array.shape:",
            "        raise KernelArgumentError(",
            "            f\"{keyword} holds row positions: pass an integer array (int32 or int64) "
            "with {rank} axes, none empty; got {array.dtype} of shape {array.shape}\",",
            "            keyword, rank, array.shape)",
            "    return np.ascontiguousarray(array), dtype", "", "",
            "compute.__doc__ += (\"\\n    Index arrays (integers, int32 or int64; each value a row"
            " of the table it indexes, checked): \" + \", \".join(_INDEX_ARGUMENTS) + \"\\n\")", ""]



_MEMBER_CODE.register(ir.Scan)(_not_a_loop_member)

_DRIVER_WORDS = frozenset({
    "np", "numba", "math", "prange", "range", "int", "float", "dtype", "parallel", "inplace",
    "if", "else", "elif", "for", "in", "not", "and", "or", "is", "True", "False", "None",
    "min", "max", "abs", "raise"})
_WORD = re.compile(r"(?<![\w.])([A-Za-z_]\w*)")
_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")


def _suffixed(statement: str, suffix: str, keep: set[str]) -> str:
    """A recurrence step's driver statement with its own names suffixed (outside strings):
    every name but NumPy's, the driver's and the module's helpers (``_check``, ``_tanh``)."""
    def rename(match: re.Match) -> str:
        word = match.group(1)
        if word in _DRIVER_WORDS or word in keep or word.startswith("_"):
            return word
        return word + suffix

    parts = _QUOTED.split(statement)
    return "".join(part if k % 2 else _WORD.sub(rename, part) for k, part in enumerate(parts))
