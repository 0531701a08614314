"""Kernel plan: the IR of a derivation's outputs as an ordered list of steps to execute.

The kinds of step (``symdl.kernels.steps``): ``Contraction`` (a BLAS product),
``BatchedContraction`` (a product of tensors of any rank as matrix products),
``LinearSolve``, ``RowStats`` (the row maxima and sums of exponentials of softmax and
logsumexp), ``LoopGroup`` (one fused loop nest computing every elementwise node and every
reduction over its iteration space, storing only what later steps or the caller read) and
``RowStream`` (``X v``, a loop over rows and ``X^T r`` in one pass).

Before grouping, products of three or more tensors are split into pairwise contractions in
a cheap order (``X^T (s ⊙ (X v))``, never ``(X^T diag(s) X) v``), and vectors are folded into
the matrix they scale, so that what remains is either elementwise or a BLAS product.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from symdl import ir
from symdl.ir.nodes import rebuilt
from symdl.ir.rules import Rules
from symdl.kernels.loops import (
    INLINE_READS,
    einsum_label_vars,
    is_pointwise,
    is_reduction,
    is_value,
    iteration,
    loop_cost,
    node_reads,
    operand_reads,
    row_stats_kind,
    row_stats_of,
    summed_labels,
)
from symdl.kernels.steps import (
    BatchedContraction,
    Contraction,
    Determinant,
    LinearSolve,
    LoopGroup,
    MatrixFunctionStep,
    RowMax,
    RowStats,
    RowStream,
    ScanStep,
    ScatterLoop,
    Step,
    Symmetric,
    batched_contraction,
    window_product,
)


def raw_einsum(operands, specs, out, coeff: sp.Expr = 1) -> ir.Einsum:
    """An einsum exactly as given: no inlining, so a planned contraction order survives."""
    operands, specs, out = tuple(operands), tuple(tuple(s) for s in specs), tuple(out)
    operands, specs, out = ir._canonical_labels(operands, specs, out)
    dims = ir._label_dims(operands, specs)
    shape = tuple(dims[lab] for lab in out)
    return ir._intern(ir.Einsum(operands, specs, out, sp.sympify(coeff), shape))


def _big_labels(spec, dims) -> frozenset:
    return frozenset(lab for lab in spec if dims[lab] != 1)


def blas_pattern(node: ir.Node) -> tuple[int, int, int] | None:
    """``(a_other, summed, b_other)`` if ``node`` is a product of two matrices over one index."""
    if not isinstance(node, ir.Einsum) or len(node.operands) != 2:
        return None
    if any(op.rank != 2 or isinstance(op, (ir.Ones, ir.Identity)) for op in node.operands):
        return None
    dims = node.label_dims()
    a, b = node.specs
    if len(set(a)) != 2 or len(set(b)) != 2:
        return None
    shared = set(a) & set(b)
    if len(shared) != 1:
        return None
    (s,) = shared
    if s in node.out:
        return None
    a_other = a[1 - a.index(s)]
    b_other = b[1 - b.index(s)]
    if set(node.out) != {a_other, b_other} or dims[s] == 1:
        return None
    return a_other, s, b_other


def symmetric_form(node: ir.Einsum, pattern: tuple[int, int, int]) -> Symmetric | None:
    """Recognises ``Σ_s c[s] X[s, a] X[s, b]``: one operand is the other scaled by a vector
    over the summed index."""
    _, s, _ = pattern
    for k in (0, 1):
        scaled, spec_t = node.operands[k], node.specs[k]
        base, spec_x = node.operands[1 - k], node.specs[1 - k]
        if not (isinstance(scaled, ir.Einsum) and len(scaled.operands) == 2
                and not summed_labels(scaled) and scaled.coeff == 1):
            continue
        outer = dict(zip(scaled.out, spec_t, strict=True))
        dims = scaled.label_dims()
        for j in (0, 1):
            if scaled.operands[j] is not base:
                continue
            inner = tuple(outer.get(lab) for lab in scaled.specs[j])
            if s not in inner or inner.index(s) != spec_x.index(s):
                continue
            weight, spec_w = scaled.operands[1 - j], scaled.specs[1 - j]
            big = [outer.get(lab) for lab in spec_w if dims[lab] != 1]
            if big == [s] and weight.rank in (1, 2):
                if isinstance(weight, ir.Ones):  # X^T X: a Gram matrix, no weight to read
                    return Symmetric(base, spec_x.index(s) == 0, None)
                if is_value(weight):  # a constant weight has no array to read
                    return None
                return Symmetric(base, spec_x.index(s) == 0, weight)
    return None


def lower(roots: list[ir.Node]) -> dict[int, ir.Node]:
    """Rewrites every summing product of three or more operands into pairwise ones, and
    products needed with several coefficients (``c1 (A B)``, ``c2 (A B)``) into scalings of
    one product (``_share_scaled_products``).

    Returns a map from the id of each original node to its lowered equivalent.
    """
    order = ir.topological_order(roots)
    first = _lower_all(order, set())
    coefficients: dict[tuple, set] = {}
    for node in first.values():
        if _is_product(node):
            coefficients.setdefault(_product_key(node), set()).add(node.coeff)
    shared = {key for key, found in coefficients.items() if len(found) > 1}
    if not shared:
        return first
    return _lower_all(order, shared)


def _is_product(node: ir.Node) -> bool:
    """A contraction of two operands over at least one label (a BLAS candidate)."""
    return (isinstance(node, ir.Einsum) and len(node.operands) == 2
            and bool(set().union(*map(set, node.specs)) - set(node.out)))


def _product_key(node: ir.Einsum) -> tuple:
    return tuple(id(op) for op in node.operands), node.specs, node.out


def _lower_all(order: list[ir.Node], shared: set[tuple]) -> dict[int, ir.Node]:
    """Lowers ``order`` (topological); a product whose key is in ``shared`` (the graph needs
    it with several coefficients) becomes a scaling of the one unscaled product
    (``_share_scaled_products``)."""
    lowered: dict[int, ir.Node] = {}

    def get(node: ir.Node) -> ir.Node:
        return lowered[id(node)]

    for node in order:
        lowered[id(node)] = _share_scaled_products(_LOWER(node, get), shared)
    return lowered


def _share_scaled_products(node: ir.Node, shared: set[tuple]) -> ir.Node:
    """``c (A B)`` as ``c`` times the product ``A B`` when the graph needs ``A B`` with
    another coefficient too: one BLAS call, each scaling in the loop that reads it. A
    training step reads each weight gradient ``X^T dZ`` as its output and, scaled by
    ``1 - beta1``, in Adam's first moment: two identical GEMMs before."""
    if not (shared and _is_product(node) and node.coeff != 1
            and _product_key(node) in shared):
        return node
    unit = raw_einsum(node.operands, node.specs, node.out)
    labels = tuple(range(unit.rank))
    return raw_einsum([unit], [labels], labels, node.coeff)


def _lower_einsum_node(node: ir.Einsum, get) -> ir.Node:
    if not node.operands:  # a constant
        return node
    operands = [get(op) for op in node.operands]
    return _lower_einsum(operands, list(node.specs), node.out, node.coeff, node)


def _lower_add(node: ir.Add, get) -> ir.Node:
    terms = [get(t) for t in node.terms]
    return _factor_common_operand(terms) or _add_tree(terms)


_LOWER = Rules("kernel lowering", {
    ir.Einsum: _lower_einsum_node,
    ir.Map: lambda node, get: ir._intern(ir.Map(node.fn, tuple(get(a) for a in node.args))),
    ir.Add: _lower_add,
    ir.LogSumExp: lambda node, get: ir._intern(ir.LogSumExp(get(node.arg), node.axis)),
    ir.Softmax: lambda node, get: ir._intern(ir.Softmax(get(node.arg), node.axis)),
    ir.Solve: lambda node, get: ir._intern(ir.Solve(get(node.a), get(node.b), node.spd)),
    ir.Det: lambda node, get: ir._intern(ir.Det(get(node.a), node.log, node.spd)),
    ir.Named: lambda node, get: get(node.body),
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity): lambda node, get: node,
})


MAX_ADD_TERMS = 32
"""A sum of more terms is computed as a tree of partial sums of at most this many."""


def _add_tree(terms: list[ir.Node]) -> ir.Node:
    """The sum of ``terms`` as a tree of partial sums of at most ``MAX_ADD_TERMS`` terms.

    Each partial sum follows its terms in the plan's order, so when a long loop is split
    (``split_long_groups``), the parts pass on a few partial sums instead of every term."""
    while len(terms) > MAX_ADD_TERMS:
        terms = [chunk[0] if len(chunk) == 1 else ir._intern(ir.Add(tuple(chunk)))
                 for chunk in (terms[k:k + MAX_ADD_TERMS]
                               for k in range(0, len(terms), MAX_ADD_TERMS))]
    return ir._intern(ir.Add(tuple(terms)))


def _factor_common_operand(terms: list[ir.Node]) -> ir.Node | None:
    """``A B1 c1 + A B2 c2`` -> ``A (c1 B1 + c2 B2)``: one product instead of several
    (``X^T σ/n - X^T y/n`` reads X once as ``X^T (σ - y)/n``)."""
    if len(terms) < 2 or not all(isinstance(t, ir.Einsum) and len(t.operands) == 2
                                 for t in terms):
        return None
    first = terms[0]
    for pos in (0, 1):
        common, spec = first.operands[pos], first.specs[pos]
        other_spec = first.specs[1 - pos]
        scaled = []
        for t in terms:
            k = next((q for q in (0, 1) if t.operands[q] is common and t.specs[q] == spec
                      and t.specs[1 - q] == other_spec and t.out == first.out), None)
            if k is None:
                break
            operand = t.operands[1 - k]
            labels = tuple(range(operand.rank))
            scaled.append(raw_einsum([operand], [labels], labels, t.coeff))
        else:
            combined = _add_tree(scaled)
            return raw_einsum([common, combined], [spec, other_spec], first.out)
    return None


def _lower_einsum(operands, specs, out, coeff, original) -> ir.Node:
    dims = ir._label_dims(tuple(operands), tuple(specs))
    summed = [lab for lab in dims if lab not in out and dims[lab] != 1]
    if not summed or len(operands) <= 2:
        if all(op is o for op, o in zip(operands, original.operands, strict=True)):
            return original
        return raw_einsum(operands, specs, out, coeff)
    # Contract pairs, cheapest first. A dimension counts as large (1000) unless it is 1; the
    # cost of a pair is its iteration space, ties broken by the size of its result. This
    # scales X by s before X^T (s ⊙ X), and computes X v first in X^T (s ⊙ (X v)).
    def size(labels) -> int:
        return 1000 ** sum(1 for lab in labels if dims[lab] != 1)

    while len(operands) > 2:
        best = None
        for i, j in itertools.combinations(range(len(operands)), 2):
            if not set(specs[i]) & set(specs[j]):
                continue
            rest = [specs[k] for k in range(len(operands)) if k not in (i, j)]
            needed = set(out).union(*rest)
            pair_out = tuple(dict.fromkeys(
                lab for lab in itertools.chain(specs[i], specs[j]) if lab in needed))
            cost = (size(set(specs[i]) | set(specs[j])), size(pair_out))
            if best is None or cost < best[0]:
                best = (cost, i, j, pair_out)
        if best is None:
            break
        _, i, j, pair_out = best
        pair = raw_einsum([operands[i], operands[j]], [specs[i], specs[j]], pair_out)
        keep = [k for k in range(len(operands)) if k not in (i, j)]
        operands = [operands[k] for k in keep] + [pair]
        specs = [specs[k] for k in keep] + [pair_out]
    return raw_einsum(operands, specs, out, coeff)


@dataclass
class Plan:
    steps: list[Step]
    roots: dict[str, ir.Node]
    materialized: set[int]
    """Ids of nodes stored in arrays (besides leaves): read by a later step or a root."""

    def in_place_safe(self, output: str, leaf: ir.Leaf) -> bool:
        """Whether output ``output`` may be written into the array of input ``leaf``.

        True only when one loop group both reads ``leaf`` and computes the output, reading
        each entry at the index the output writes, and no read of ``leaf`` comes after the
        write (as in an optimizer update). Anything else (a BLAS product or another loop
        reading the input) could see the new values.
        """
        root = self.roots[output]
        if root.shape != leaf.shape:
            return False
        home = next((s for s in self.steps
                     if isinstance(s, LoopGroup) and any(m is root for m in s.members)), None)
        if home is None or id(root) in home.reductions:
            return False
        position = next(k for k, m in enumerate(home.members) if m is root)
        own = home.indices[id(root)]
        if any(op is leaf for step in self.steps if step is not home for op, _ in step.reads()):
            return False
        for k, member in enumerate(home.members):
            reads = [at for op, at in home.reads_of(member) if op is leaf]
            if reads and (k > position or id(member) in home.reductions
                          or home.indices.get(id(member)) != own
                          or any(at != own for at in reads)):
                return False
        return True


def _fusable_group(steps: list[Step], after: int, loop_dims: tuple,
                   reads) -> LoopGroup | None:
    """The earliest loop group at or after step ``after`` that iterates over ``loop_dims`` and
    can compute a node with these operand ``reads`` in the same iteration: an operand computed
    in that group must be read at the index it is computed at, and not be a reduction (whose
    value is complete only after the loop)."""
    for k in range(max(after, 0), len(steps)):
        group = steps[k]
        if not isinstance(group, LoopGroup) or group.dims != loop_dims:
            continue
        # Membership, not the group a node was placed in: a cheap input function recomputed
        # inside several groups is a member of each, and only a read at its own index may
        # use that copy.
        if all(not computes(group, op)
               or (group.indices[id(op)] == at and id(op) not in group.reductions)
               for op, at in reads):
            return group
    return None


def computes(group: LoopGroup, node: ir.Node) -> bool:
    """Whether ``node`` is computed inside ``group``'s loop (placed there or recomputed)."""
    return id(node) in group.indices and any(m is node for m in group.members)


def _cheap_function_of_inputs(node: ir.Node) -> bool:
    """A pointwise node of inputs and constants alone whose arithmetic costs less than
    storing it and reading it back: products, sums, integer powers (no exp, log, sqrt)."""
    if not is_pointwise(node) or not _CHEAP_ARITHMETIC(node):
        return False
    return all(is_value(op) for op, _ in node_reads(node))


def _cheap_map(node: ir.Map) -> bool:
    expr = node.fn.expr
    return not expr.has(sp.Function) and all(p.exp.is_Integer for p in expr.atoms(sp.Pow))


_CHEAP_ARITHMETIC = Rules("test for cheap arithmetic", {
    ir.Map: _cheap_map,
    (ir.Einsum, ir.Add): lambda node: True,
    # Row statistics, solves: never cheap; the rest is never computed in a loop.
    (ir.LogSumExp, ir.Softmax, ir.Solve, ir.Det, ir.Leaf, ir.Ones, ir.Zero, ir.Identity,
     ir.Named): lambda node: False,
})


def plan(outputs: dict[str, ir.Node]) -> Plan:
    """Orders the computation of ``outputs`` (name -> node) into steps."""
    originals = list(outputs.values())
    lowered = lower(originals)
    roots = {name: lowered[id(node)] for name, node in outputs.items()}
    for name, node in roots.items():
        if is_value(node):  # an output that is a leaf or a constant is copied in a loop
            labels = tuple(range(node.rank))
            roots[name] = raw_einsum([node], [labels], labels) if node.rank else node
    planner = _Planner({id(n) for n in roots.values()})
    planner.fused_into_scatter = _read_by_one_scatter(list(roots.values()), planner.root_ids)
    for node in ir.topological_order(list(roots.values())):
        planner.visit(node)
    return planner.finish(roots)


class _Planner:
    """Places each node of the lowered IR, in topological order, into a step."""

    def __init__(self, root_ids: set[int]):
        self.root_ids = root_ids
        self.steps: list[Step] = []
        self.materialized: set[int] = set()
        self.group_of: dict[int, LoopGroup] = {}
        self.step_of: dict[int, int] = {}  # computed node -> index of the step computing it
        self.stats_step: dict[tuple[int, int], int] = {}
        self.group_step: dict[int, int] = {}  # id of a loop group -> its index in ``steps``
        self.group_members: dict[int, set[int]] = {}  # id of a loop group -> member ids
        # Cheap pointwise functions of inputs alone (-Y/n, eps broadcast): not stored, but
        # recomputed inside each loop that reads them at its own index.
        self.deferred: set[int] = set()
        # Products read only by a scatter, which computes them in its own loop (never stored).
        self.fused_into_scatter: set[int] = set()

    def visit(self, node: ir.Node) -> None:
        if is_value(node) or id(node) in self.fused_into_scatter:
            return
        if id(node) not in self.root_ids and (_cheap_function_of_inputs(node)
                                              or isinstance(node, INLINE_READS)):
            self.deferred.add(id(node))
            return
        self.place(node)

    def place(self, node: ir.Node) -> None:
        _PLACE(node, self)

    def add_step(self, step: Step, node: ir.Node) -> None:
        """Appends a step that computes ``node`` into an array."""
        self.steps.append(step)
        self.step_of[id(node)] = len(self.steps) - 1
        self.materialized.add(id(node))

    def place_solve(self, node: ir.Solve) -> None:
        self.materialize(node.a)
        self.materialize(node.b)
        self.add_step(LinearSolve(node), node)

    def place_determinant(self, node: ir.Det) -> None:
        self.materialize(node.a)
        self.add_step(Determinant(node), node)

    def place_computed(self, node: ir.Node) -> None:
        """A BLAS product when ``node`` is one, else a member of a fused loop."""
        windowed = window_product(node)
        if windowed is not None:  # a convolution: im2col and BLAS
            for op, _ in windowed.reads():
                self.materialize(op)
            self.add_step(windowed, node)
            return
        pattern = blas_pattern(node)
        if pattern is None:
            batched = batched_contraction(node)  # a product of tensors of any rank: GEMMs
            if batched is None:
                self.place_in_loop(node)
                return
            for op, _ in batched.reads():
                self.materialize(op)
            self.add_step(batched, node)
            return
        step = Contraction(node, pattern, symmetric_form(node, pattern))
        for op, _ in step.reads():
            self.materialize(op)
        self.add_step(step, node)

    def place_in_loop(self, node: ir.Node) -> None:
        reads = node_reads(node)
        loop_dims, axis_vars = iteration(node)
        inline = []
        for op, at in reads:
            if id(op) in self.deferred:
                if iteration(op) == (loop_dims, at):
                    inline.append(op)
                else:
                    self.materialize(op)
        # The earliest step this node may join: after every step that computes an operand.
        after = max((self.step_of[id(op)] for op, _ in reads if id(op) in self.step_of),
                    default=-1)
        stats = row_stats_of(node)
        if stats is not None:
            after = max(after, self.row_stats(*stats, row_stats_kind(node)) + 1)
        computed = [(op, at) for op, at in reads if id(op) not in self.deferred]
        group = _fusable_group(self.steps, after, loop_dims, computed)
        if group is None:
            group = LoopGroup(loop_dims)
            self.steps.append(group)
            self.group_step[id(group)] = len(self.steps) - 1
        # Membership by id, not by scanning the members: a loop of thousands of members
        # (a sum of thousands of terms) would cost time quadratic in its size.
        members = self.group_members.setdefault(id(group), set())
        for op in inline:
            if id(op) not in members:
                members.add(id(op))
                group.add(op, iteration(op)[1])
        members.add(id(node))
        group.add(node, axis_vars, is_reduction(node))
        self.group_of[id(node)] = group
        self.step_of[id(node)] = self.group_step[id(group)]
        for op, _ in computed:
            if not is_value(op) and self.group_of.get(id(op)) is not group:
                self.materialized.add(id(op))

    def row_stats(self, arg: ir.Node, axis: int, kind: str = "exp") -> int:
        """The index of the step computing the row statistics of ``arg`` (added if new)."""
        key = (id(arg), axis) if kind == "exp" else (kind, id(arg), axis)
        if kind == "max":
            if key not in self.stats_step:
                step = RowMax(arg, axis)
                for op, _ in step.reads():  # a window is read through, never stored
                    self.materialize(op)
                self.steps.append(step)
                self.stats_step[key] = len(self.steps) - 1
            return self.stats_step[key]
        self.materialize(arg)
        if key not in self.stats_step:
            self.steps.append(RowStats(arg, axis))
            self.stats_step[key] = len(self.steps) - 1
        return self.stats_step[key]

    def materialize(self, op: ir.Node) -> None:
        """``op`` is read from an array: a deferred node is now computed once and stored."""
        if is_value(op):
            return
        if id(op) in self.deferred:
            self.deferred.discard(id(op))
            self.place(op)
        self.materialized.add(id(op))

    def finish(self, roots: dict[str, ir.Node]) -> Plan:
        root_ids, materialized = self.root_ids, self.materialized
        steps = _sink_groups(_drop_unread(self.steps, root_ids))
        materialized |= root_ids
        groups = [s for s in steps if isinstance(s, LoopGroup)]
        # A reduction's result is complete only after its loop: readers elsewhere need it.
        for group in groups:
            materialized.update(id(m) for m in group.members if id(m) in group.reductions)
        # Nodes that were stored only for a loop they have now joined are loop temporaries.
        for group in groups:
            for m in group.members:
                if (id(m) in materialized and id(m) not in root_ids
                        and id(m) not in group.reductions
                        and not _read_outside(m, group, steps)):
                    materialized.discard(id(m))
        steps = split_long_groups(steps, materialized)
        # Last: the row stream keeps the arrays its parallel form (three steps) reads.
        steps = _stream_rows(steps)
        _mark_stores(steps, materialized)
        return Plan(steps, roots, materialized)


def _not_placed(node: ir.Node, planner: _Planner) -> None:
    raise TypeError(f"symdl internal error: a {type(node).__name__} node reached the planner")


_PLACE = Rules("kernel planning", {
    ir.Solve: lambda node, planner: planner.place_solve(node),
    ir.Det: lambda node, planner: planner.place_determinant(node),
    (ir.Einsum, ir.Map, ir.Add, ir.LogSumExp, ir.Softmax):
        lambda node, planner: planner.place_computed(node),
    # Values are read where they are needed; names are lowered away.
    (ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Named): _not_placed,
})


def _mark_stores(steps: list[Step], materialized: set[int]) -> None:
    """Sets each loop's ``stores``: the members it writes into arrays. A node recomputed in
    several loops (a cheap function of inputs) is stored by the first of them only: one
    array, written once, complete before any later reader."""
    home = storing_groups(steps)
    for step in steps:
        for group in step.loop_groups():
            group.stores = {id(m) for m in group.members
                            if id(m) in materialized and home.get(id(m)) == id(group)}


def storing_groups(steps: list[Step]) -> dict[int, int]:
    """Node id -> id of the loop group that stores it: the first that computes it. A cheap
    function of inputs is recomputed in every loop that reads it at its own index; each
    copy is the same values, so the first loop's array serves every later reader."""
    home: dict[int, int] = {}
    for step in steps:
        for group in step.loop_groups():
            for member in group.members:
                home.setdefault(id(member), id(group))
    return home


def _drop_unread(steps: list[Step], root_ids: set[int]) -> list[Step]:
    """Removes loop members that no step reads and no output is (the scaled operand of a
    symmetric product, read only by the product's symmetric form)."""
    changed = True
    while changed:
        changed = False
        read = {id(op) for step in steps for op, _ in step.reads()}
        for group in (s for s in steps if isinstance(s, LoopGroup)):
            for member in list(group.members):
                if id(member) not in read and id(member) not in root_ids:
                    group.members.remove(member)
                    group.reductions.discard(id(member))
                    changed = True
        steps = [s for s in steps if not isinstance(s, LoopGroup) or s.members]
        # A maximum's pass that nothing reads any more (the per-row maxima of a pooling
        # window, whose one-pass maximum now serves both the value and the derivative).
        needed = set().union(*(s.needs() for s in steps))
        kept = [s for s in steps if not isinstance(s, RowMax) or s.provides() & needed]
        changed = changed or len(kept) != len(steps)
        steps = kept
    return steps


def _read_outside(node: ir.Node, home: LoopGroup, steps: list[Step]) -> bool:
    if any(op is node for s in steps if s is not home for op, _ in s.reads()):
        return True
    # Inside its own loop a node is a temporary only where it is read at its own index.
    own = home.indices[id(node)]
    return any(op is node and at != own for op, at in home.reads())


def _sink_groups(steps: list[Step]) -> list[Step]:
    """Merges a loop group into a later one over the same dimensions, moving the steps in
    between that depend on it to after the merged loop: one pass over the data instead of
    two (softmax cross-entropy: the sum of Y ⊙ Z joins the loop that writes the gradient,
    and the scalar that adds it to the log-sum-exps moves after that loop)."""
    steps = list(steps)
    changed = True
    while changed:
        changed = False
        for i, early in enumerate(steps):
            if not isinstance(early, LoopGroup) or not early.dims:
                continue
            merged = _try_sink(steps, i)
            if merged is not None:
                steps = merged
                changed = True
                break
    return steps


def _try_sink(steps: list[Step], i: int) -> list[Step] | None:
    early = steps[i]
    mine = {id(m) for m in early.members}
    moved: list[Step] = []
    moved_keys: set = set(mine)
    for j in range(i + 1, len(steps)):
        late = steps[j]
        needs = late.needs()
        if isinstance(late, LoopGroup) and late.dims == early.dims:
            others = moved_keys - mine
            if not (needs & others) and all(
                    id(op) not in mine
                    or (at == early.indices[id(op)] and id(op) not in early.reductions)
                    for op, at in late.reads()):
                merged = LoopGroup(late.dims, early.members + late.members,
                                   {**early.indices, **late.indices},
                                   early.reductions | late.reductions,
                                   {**early.member_reads, **late.member_reads})
                stay = [s for s in steps[i + 1:j] if all(s is not m for m in moved)]
                return steps[:i] + stay + [merged] + moved + steps[j + 1:]
        if needs & moved_keys:
            moved.append(late)
            moved_keys |= late.provides()
    return None


def _matrix_vector(step: Step) -> tuple[ir.Node, int, int, ir.Node] | None:
    """``(X, contracted label, free label, vector)`` when ``step`` is a product of a 2-D
    input ``X`` (both axes larger than 1) with a vector."""
    if not isinstance(step, Contraction) or step.symmetric is not None:
        return None
    node = step.node
    dims = node.label_dims()
    pairs = tuple(zip(node.operands, node.specs, strict=True))
    for (a, sa), (b, sb) in (pairs, pairs[::-1]):
        if not isinstance(a, ir.Leaf) or a.rank != 2 or any(dims[x] == 1 for x in sa):
            continue
        big = [x for x in sb if dims[x] != 1]
        if len(big) != 1 or big[0] not in sa or len(set(sa)) != 2:
            continue
        summed = big[0]
        free = sa[1 - sa.index(summed)]
        if [x for x in node.out if dims[x] != 1] == [free]:
            return a, summed, free, b
    return None


def _stream_rows(steps: list[Step]) -> list[Step]:
    """Finds ``X v``, a loop over X's rows, ``X^T r`` (a generalised linear model's value
    and gradient) and makes them one ``RowStream``."""
    out: list[Step] = []
    k = 0
    while k < len(steps):
        window = steps[k:k + 3]
        stream = _row_stream(*window) if len(window) == 3 else None
        if stream is not None:
            out.append(stream)
            k += 3
        else:
            out.append(steps[k])
            k += 1
    return out


def _row_stream(first: Step, group: Step, second: Step) -> RowStream | None:
    one, two = _matrix_vector(first), _matrix_vector(second)
    if one is None or two is None or not isinstance(group, LoopGroup):
        return None
    X, cols, rows, vector = one
    X2, rows2, cols2, r = two
    if X2 is not X or first.node.coeff != 1:
        return None
    pos = {lab: i for i, lab in enumerate(first.node.specs[first.node.operands.index(X)])}
    pos2 = {lab: i for i, lab in enumerate(second.node.specs[second.node.operands.index(X)])}
    if pos[rows] != pos2[rows2] or len(group.dims) != 1 or group.dims[0] != X.shape[pos[rows]]:
        return None
    z = first.node
    row_var = group.indices.get(id(r))
    if row_var is None or id(r) in group.reductions or [v for v in row_var if v is not None] != [0]:
        return None
    for member in group.members:
        if id(member) in group.reductions and any(v is not None for v in group.indices[id(member)]):
            return None
        for op, at in group.reads_of(member):
            if op is z and [v for v in at if v is not None] != [0]:
                return None
    return RowStream(first, group, second, X, rows, cols, rows2, cols2, vector, r)


MAX_LOOP_COST = 400
"""The most work one generated loop function holds, in ``loop_cost`` units (about one per
arithmetic statement; a call to an inlined helper such as ``_tanh`` counts as the dozen
statements it becomes). Numba's compile time grows faster than linearly with the length of
one function (a fused loop of 500 terms took 726 s), and linearly in the number of
functions: a longer loop is split into consecutive loops of at most this cost. See
``benchmarks/compile_cost.py``."""


def split_long_groups(steps: list[Step], materialized: set[int],
                      budget: int = MAX_LOOP_COST) -> list[Step]:
    """Splits every loop group whose members cost more than ``budget`` into consecutive
    groups over the same dimensions, each within the budget (a single member costlier than
    the budget gets a group of its own). A member read by a later part is stored (added to
    ``materialized``): the parts run one after another, each a full loop nest."""
    out: list[Step] = []
    for step in steps:
        if not isinstance(step, LoopGroup) or sum(map(loop_cost, step.members)) <= budget:
            out.append(step)
            continue
        parts: list[LoopGroup] = []
        part_of: dict[int, int] = {}
        cost = budget + 1
        for member in step.members:
            c = loop_cost(member)
            if cost + c > budget:
                parts.append(LoopGroup(step.dims))
                cost = 0
            part = parts[-1]
            if id(member) in part.indices:  # listed twice (an input map read by two members)
                part.members.append(member)
                continue
            cost += c
            part.add(member, step.indices[id(member)], id(member) in step.reductions)
            part_of[id(member)] = len(parts) - 1
            for op, _ in step.reads_of(member):
                home = part_of.get(id(op))
                if home is not None and home != len(parts) - 1:
                    materialized.add(id(op))  # computed in an earlier part: read from memory
        out.extend(parts)
    return out


TABLES = (_LOWER, _PLACE, _CHEAP_ARITHMETIC)
"""The rule tables of this module (their coverage of every node kind is tested)."""

__all__ = [
    "MAX_ADD_TERMS", "MAX_LOOP_COST", "BatchedContraction", "Contraction", "Determinant",
    "LinearSolve", "LoopGroup",
    "Plan", "RowStats", "RowStream", "Step", "Symmetric", "blas_pattern", "computes",
    "einsum_label_vars", "is_pointwise", "loop_cost", "lower", "node_reads", "operand_reads",
    "plan", "raw_einsum", "split_long_groups", "storing_groups", "summed_labels",
    "symmetric_form",
]


# A matrix function (norm, singular values, eigenvalues): a step of its own, as a determinant.
_LOWER.register(ir.MatrixFunction)(
    lambda node, get: ir._intern(ir.MatrixFunction(get(node.a), node.kind)))
_CHEAP_ARITHMETIC.register(ir.MatrixFunction)(lambda node: False)


def _place_matrix_function(node: ir.MatrixFunction, planner: _Planner) -> None:
    planner.materialize(node.a)
    planner.add_step(MatrixFunctionStep(node), node)


_PLACE.register(ir.MatrixFunction)(_place_matrix_function)



# ---------------------------------------------------------------------------------------------
# Computed positions (symdl.ir.indexed). Windows and gathers are read through by the loops that
# read them (``loops.Through``); one is stored only where a step that reads whole arrays (a
# BLAS product, a solve) or the caller reads it. A scatter and a scatter-add are loops of their
# own (``ScatterLoop``), fused with the product they scatter where nothing else reads it; the
# maxima come from a ``RowMax`` pass and are then read like row statistics.


def _read_by_one_scatter(roots: list[ir.Node], root_ids: set[int]) -> set[int]:
    """Ids of the products (einsums) that only a scatter reads, and only once."""
    readers: dict[int, list[ir.Node]] = {}
    for node in ir.topological_order(roots):
        for child in set(map(id, node.children())):
            readers.setdefault(child, []).append(node)
    fused = set()
    for node in ir.topological_order(roots):
        if not isinstance(node, (ir.AffineScatter, ir.TakeAdjoint)):
            continue
        arg = node.arg
        if (isinstance(arg, ir.Einsum) and arg.operands and id(arg) not in root_ids
                and len(readers.get(id(arg), [])) == 1):
            fused.add(id(arg))
    return fused


def _place_scatter(node: ir.AffineScatter | ir.TakeAdjoint, planner: _Planner) -> None:
    fused = node.arg if id(node.arg) in planner.fused_into_scatter else None
    step = ScatterLoop(node, fused)
    for op, _ in step.reads():
        planner.materialize(op)
    if step.by_index is not None:  # scatters through the stored first arg max
        top = step.by_index.masks[0]
        planner.row_stats(top.arg, top.axis, "max")
    planner.add_step(step, node)


def _lower_indexed(node: ir.Node, get) -> ir.Node:
    return rebuilt(node, [get(c) for c in node.children()])


_LOWER.register(ir.AffineRead, ir.AffineScatter, ir.Take, ir.TakeAdjoint, ir.Max,
                ir.ArgMaxMask)(_lower_indexed)
# A window's or a gather's entry is one load (and a bounds check): recomputed where read.
_CHEAP_ARITHMETIC.register(ir.AffineRead, ir.Take)(lambda node: True)
_CHEAP_ARITHMETIC.register(ir.AffineScatter, ir.TakeAdjoint, ir.Max, ir.ArgMaxMask)(
    lambda node: False)
_PLACE.register(ir.AffineRead, ir.Take, ir.Max, ir.ArgMaxMask)(
    lambda node, planner: planner.place_computed(node))
_PLACE.register(ir.AffineScatter, ir.TakeAdjoint)(_place_scatter)



def _lower_scan(node: ir.Scan, get) -> ir.Node:
    # The children are lowered; the step keeps its own nodes (its code is planned on its own,
    # with the closure, in ``ir.closure_of``'s order, standing for the lowered children).
    init = tuple(get(i) for i in node.init)
    bounds = tuple(None if b is None else get(b) for b in node.bounds)
    return ir._intern(ir.Scan(init, node.carry, tuple(get(s) for s in node.seqs), node.slots,
                              node.lags, bounds, tuple(get(c) for c in node.closure),
                              node.step, node.emit, node.length, node.mode, node.reverse))


def _place_scan(node: ir.Scan, planner: _Planner) -> None:
    for child in node.children():
        planner.materialize(child)
    planner.add_step(ScanStep(node), node)


_LOWER.register(ir.Scan)(_lower_scan)
_PLACE.register(ir.Scan)(_place_scan)
_CHEAP_ARITHMETIC.register(ir.Scan)(lambda node: False)
