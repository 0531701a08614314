"""Kernel plan: the IR of a derivation's outputs as an ordered list of steps to execute.

Three kinds of step:

* ``Contraction``: a matrix product ``A^T B`` and its kin, given to NumPy's BLAS;
* ``RowStats``: the row (or column) maximum and sum of exponentials that ``softmax`` and
  ``logsumexp`` need, in one pass per row with a max shift;
* ``LoopGroup``: one fused loop nest over an iteration space, computing every elementwise node
  and every reduction over that space as scalar temporaries, storing only what later steps
  or the caller read.

Before grouping, products of three or more tensors are split into pairwise contractions in
a cheap order (``X^T (s ⊙ (X v))``, never ``(X^T diag(s) X) v``), and vectors are folded into
the matrix they scale, so that what remains is either elementwise or a BLAS product.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy as sp

from symdl import ir


def raw_einsum(operands, specs, out, coeff: sp.Expr = 1) -> ir.Einsum:
    """An einsum exactly as given: no inlining, so a planned contraction order survives."""
    operands, specs, out = tuple(operands), tuple(tuple(s) for s in specs), tuple(out)
    operands, specs, out = ir._canonical_labels(operands, specs, out)
    dims = ir._label_dims(operands, specs)
    shape = tuple(dims[lab] for lab in out)
    return ir._intern(ir.Einsum(operands, specs, out, sp.sympify(coeff), shape))


def summed_labels(node: ir.Einsum) -> list[int]:
    """Labels that are summed over (size-1 labels excluded: a sum of one term is no sum)."""
    dims = node.label_dims()
    return [lab for lab in dims if lab not in node.out and dims[lab] != 1]


def is_pointwise(node: ir.Node) -> bool:
    if isinstance(node, (ir.Map, ir.Add, ir.LogSumExp, ir.Softmax)):
        return True
    return isinstance(node, ir.Einsum) and bool(node.operands) and not summed_labels(node)


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
                if _is_value(weight):  # a constant weight has no array to read
                    return None
                return Symmetric(base, spec_x.index(s) == 0, weight)
    return None


def lower(roots: list[ir.Node]) -> dict[int, ir.Node]:
    """Rewrites every summing product of three or more operands into pairwise ones.

    Returns a map from the id of each original node to its lowered equivalent.
    """
    lowered: dict[int, ir.Node] = {}

    def get(node: ir.Node) -> ir.Node:
        return lowered[id(node)]

    for node in ir.topological_order(roots):
        if isinstance(node, ir.Einsum) and node.operands:
            operands = [get(op) for op in node.operands]
            new = _lower_einsum(operands, list(node.specs), node.out, node.coeff, node)
        elif isinstance(node, ir.Map):
            new = ir._intern(ir.Map(node.fn, tuple(get(a) for a in node.args)))
        elif isinstance(node, ir.Add):
            terms = [get(t) for t in node.terms]
            new = _factor_common_operand(terms) or _add_tree(terms)
        elif isinstance(node, ir.LogSumExp):
            new = ir._intern(ir.LogSumExp(get(node.arg), node.axis))
        elif isinstance(node, ir.Softmax):
            new = ir._intern(ir.Softmax(get(node.arg), node.axis))
        elif isinstance(node, ir.Solve):
            new = ir._intern(ir.Solve(get(node.a), get(node.b)))
        elif isinstance(node, ir.Named):
            new = get(node.body)
        else:
            new = node
        lowered[id(node)] = new
    return lowered


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
class Symmetric:
    """``X^T diag(c) X``: the product is symmetric, and when ``c >= 0`` it is ``B^T B`` with
    ``B = sqrt(c) ⊙ X``, which BLAS computes as one triangle (syrk), half the work."""

    base: ir.Node
    rows_first: bool
    """Whether ``base``'s first axis is the summed one (else it is read transposed)."""
    weight: ir.Node | None
    """``c``; None for ``X^T X`` (every weight 1)."""


@dataclass
class Contraction:
    node: ir.Einsum
    pattern: tuple[int, int, int]
    symmetric: Symmetric | None = None


@dataclass
class RowStats:
    """Max and sum of exp along ``axis`` of ``arg`` (which is materialised)."""

    arg: ir.Node
    axis: int


@dataclass
class LinearSolve:
    """``A^{-1} B`` by LU factorisation (LAPACK through ``np.linalg.solve``)."""

    node: ir.Solve


@dataclass
class LoopGroup:
    """One loop nest over ``dims``; ``members`` in order, each with the loop variables that
    index its axes (``None`` for a size-1 axis)."""

    dims: tuple[sp.Expr, ...]
    members: list[ir.Node] = field(default_factory=list)
    indices: dict[int, tuple] = field(default_factory=dict)
    reductions: set[int] = field(default_factory=set)


@dataclass
class RowStream:
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


Step = Contraction | RowStats | LoopGroup | RowStream


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
        for step in self.steps:
            if isinstance(step, Contraction):
                weight = step.symmetric.weight if step.symmetric else None
                if any(op is leaf for op in step.node.operands) or weight is leaf:
                    return False
            elif isinstance(step, RowStats):
                if step.arg is leaf:
                    return False
            elif isinstance(step, LinearSolve):
                if leaf in (step.node.a, step.node.b):
                    return False
            elif isinstance(step, RowStream):
                parts = (step.first.node.operands + step.second.node.operands
                         + tuple(op for m in step.group.members for op, _ in node_reads(m)))
                if any(op is leaf for op in parts):
                    return False
            else:
                for k, member in enumerate(step.members):
                    reads = [at for op, at in node_reads(member) if op is leaf]
                    if not reads:
                        continue
                    own = home.indices.get(id(member))
                    if (step is not home or k > position or id(member) in home.reductions
                            or own != home.indices[id(root)] or any(at != own for at in reads)):
                        return False
        return True


def _iteration(node: ir.Node) -> tuple[tuple, tuple]:
    """(loop dims, loop variable of each axis of the node) for a node computed in a loop.

    A reduction iterates over its output labels, then its summed labels.
    """
    if isinstance(node, ir.Einsum) and summed_labels(node):
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


def operand_reads(node: ir.Node, loop_vars: tuple) -> list[tuple[ir.Node, tuple]]:
    """The operands of a loop-computed node and the loop variables each is read at.

    ``loop_vars`` maps each label (einsum) or axis (elementwise) to a loop variable.
    """
    if isinstance(node, ir.Einsum):
        return [(op, tuple(loop_vars[lab] for lab in spec))
                for op, spec in zip(node.operands, node.specs, strict=True)]
    if isinstance(node, (ir.Map, ir.Add)):
        return [(c, loop_vars) for c in node.children()]
    if isinstance(node, (ir.LogSumExp, ir.Softmax)):
        return [(node.arg, loop_vars)]
    return []


def einsum_label_vars(node: ir.Einsum) -> dict[int, object]:
    """Loop variable per label of a loop-computed einsum (None for size-1 labels)."""
    dims = node.label_dims()
    _, axis_vars = _iteration(node)
    mapping: dict[int, object] = {lab: None for lab in dims}
    for lab, var in zip(node.out, axis_vars, strict=True):
        mapping[lab] = var
    if summed_labels(node):
        start = sum(1 for lab in node.out if dims[lab] != 1)
        for k, lab in enumerate(summed_labels(node)):
            mapping[lab] = start + k
    return mapping


def node_reads(node: ir.Node) -> list[tuple[ir.Node, tuple]]:
    """Operand reads of ``node`` in its own loop variables."""
    if isinstance(node, ir.Einsum):
        return operand_reads(node, einsum_label_vars(node))
    _, axis_vars = _iteration(node)
    return operand_reads(node, axis_vars)


def _symmetric_reads(symmetric: Symmetric) -> tuple[ir.Node, ...]:
    """The arrays ``X^T diag(c) X`` reads: ``c`` (unless all ones) and ``X``."""
    if symmetric.weight is None:
        return (symmetric.base,)
    return (symmetric.weight, symmetric.base)


def _is_value(node: ir.Node) -> bool:
    """Leaves and constants: read directly, never computed."""
    return isinstance(node, (ir.Leaf, ir.Ones, ir.Zero, ir.Identity)) or ir.is_scalar_constant(node)


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
    if not is_pointwise(node) or isinstance(node, (ir.LogSumExp, ir.Softmax)):
        return False
    if not all(_is_value(op) for op, _ in node_reads(node)):
        return False
    if isinstance(node, ir.Map):
        expr = node.fn.expr
        return not expr.has(sp.Function) and all(
            p.exp.is_Integer for p in expr.atoms(sp.Pow))
    return True


def plan(outputs: dict[str, ir.Node]) -> Plan:
    """Orders the computation of ``outputs`` (name -> node) into steps."""
    originals = list(outputs.values())
    lowered = lower(originals)
    roots = {name: lowered[id(node)] for name, node in outputs.items()}
    for name, node in roots.items():
        if _is_value(node):  # an output that is a leaf or a constant is copied in a loop
            labels = tuple(range(node.rank))
            roots[name] = raw_einsum([node], [labels], labels) if node.rank else node
    root_ids = {id(n) for n in roots.values()}
    steps: list[Step] = []
    materialized: set[int] = set()
    group_of: dict[int, LoopGroup] = {}
    step_of: dict[int, int] = {}  # computed node -> index of the step that computes it
    stats_step: dict[tuple[int, int], int] = {}
    group_step: dict[int, int] = {}  # id of a loop group -> its index in ``steps``
    group_members: dict[int, set[int]] = {}  # id of a loop group -> ids of its members
    # Cheap pointwise functions of inputs alone (-Y/n, eps broadcast): not stored, but
    # recomputed inside each loop that reads them at its own index.
    deferred: set[int] = set()

    def place(node: ir.Node) -> None:
        if isinstance(node, ir.Solve):
            materialize(node.a)
            materialize(node.b)
            steps.append(LinearSolve(node))
            step_of[id(node)] = len(steps) - 1
            materialized.add(id(node))
            return
        pattern = blas_pattern(node)
        if pattern is not None:
            symmetric = symmetric_form(node, pattern)
            # X^T diag(c) X reads c and X only: the scaled operand is never stored.
            for op in (_symmetric_reads(symmetric) if symmetric else node.operands):
                materialize(op)
            steps.append(Contraction(node, pattern, symmetric))
            step_of[id(node)] = len(steps) - 1
            materialized.add(id(node))
            return
        reads = node_reads(node)
        loop_dims, axis_vars = _iteration(node)
        inline = []
        for op, at in reads:
            if id(op) in deferred:
                if _iteration(op) == (loop_dims, at):
                    inline.append(op)
                else:
                    materialize(op)
        # The earliest step this node may join: after every step that computes an operand.
        after = max((step_of[id(op)] for op, _ in reads if id(op) in step_of), default=-1)
        if isinstance(node, (ir.LogSumExp, ir.Softmax)):
            materialize(node.arg)
            key = (id(node.arg), node.axis)
            if key not in stats_step:
                steps.append(RowStats(node.arg, node.axis))
                stats_step[key] = len(steps) - 1
            after = max(after, stats_step[key] + 1)
        computed = [(op, at) for op, at in reads if id(op) not in deferred]
        group = _fusable_group(steps, after, loop_dims, computed)
        if group is None:
            group = LoopGroup(loop_dims)
            steps.append(group)
            group_step[id(group)] = len(steps) - 1
        # Membership by id, not by scanning the members: a loop of thousands of members
        # (a sum of thousands of terms) would cost time quadratic in its size.
        members = group_members.setdefault(id(group), set())
        for op in inline:
            if id(op) not in members:
                members.add(id(op))
                group.members.append(op)
                group.indices[id(op)] = _iteration(op)[1]
        members.add(id(node))
        group.members.append(node)
        group.indices[id(node)] = axis_vars
        if isinstance(node, ir.Einsum) and summed_labels(node):
            group.reductions.add(id(node))
        group_of[id(node)] = group
        step_of[id(node)] = group_step[id(group)]
        for op, _ in computed:
            if not _is_value(op) and group_of.get(id(op)) is not group:
                materialized.add(id(op))

    def materialize(op: ir.Node) -> None:
        """``op`` is read from an array: a deferred node is now computed once and stored."""
        if _is_value(op):
            return
        if id(op) in deferred:
            deferred.discard(id(op))
            place(op)
        materialized.add(id(op))

    for node in ir.topological_order(list(roots.values())):
        if _is_value(node):
            continue
        if id(node) not in root_ids and _cheap_function_of_inputs(node):
            deferred.add(id(node))
            continue
        place(node)
    steps = _sink_groups(_drop_unread(steps, root_ids))
    materialized |= root_ids
    # A reduction's result is complete only after its loop: readers elsewhere need it stored.
    for group in (s for s in steps if isinstance(s, LoopGroup)):
        for m in group.members:
            if id(m) in group.reductions:
                materialized.add(id(m))
    # Nodes that were stored only for a loop they have now joined are loop temporaries.
    for group in (s for s in steps if isinstance(s, LoopGroup)):
        for m in group.members:
            if (id(m) in materialized and id(m) not in root_ids
                    and id(m) not in group.reductions and not _read_outside(m, group, steps)):
                materialized.discard(id(m))
    steps = split_long_groups(steps, materialized)
    # Last: the row stream keeps the arrays its parallel form (three steps) reads.
    return Plan(_stream_rows(steps), roots, materialized)


def storing_groups(steps: list[Step]) -> dict[int, int]:
    """Node id -> id of the loop group that stores it: the first that computes it. A cheap
    function of inputs is recomputed in every loop that reads it at its own index; each
    copy is the same values, so the first loop's array serves every later reader."""
    home: dict[int, int] = {}
    for step in steps:
        group = step.group if isinstance(step, RowStream) else step
        if isinstance(group, LoopGroup):
            for member in group.members:
                home.setdefault(id(member), id(group))
    return home


def _drop_unread(steps: list[Step], root_ids: set[int]) -> list[Step]:
    """Removes loop members that no step reads and no output is (the scaled operand of a
    symmetric product, read only by the product's symmetric form)."""
    changed = True
    while changed:
        changed = False
        read = {id(op) for step in steps for op, _ in _step_reads(step)}
        for group in (s for s in steps if isinstance(s, LoopGroup)):
            for member in list(group.members):
                if id(member) not in read and id(member) not in root_ids:
                    group.members.remove(member)
                    group.reductions.discard(id(member))
                    changed = True
        steps = [s for s in steps if not isinstance(s, LoopGroup) or s.members]
    return steps


def _step_reads(step: Step) -> list[tuple[ir.Node, tuple | None]]:
    """(node, index) pairs a step reads (index None: the whole array)."""
    if isinstance(step, Contraction):
        if step.symmetric is not None:
            return [(op, None) for op in _symmetric_reads(step.symmetric)]
        return [(op, None) for op in step.node.operands]
    if isinstance(step, RowStats):
        return [(step.arg, None)]
    if isinstance(step, LinearSolve):
        return [(step.node.a, None), (step.node.b, None)]
    if isinstance(step, RowStream):
        return _step_reads(step.first) + _step_reads(step.group) + _step_reads(step.second)
    return [(op, at) for m in step.members for op, at in node_reads(m)]


def _read_outside(node: ir.Node, home: LoopGroup, steps: list[Step]) -> bool:
    if any(op is node for s in steps if s is not home for op, _ in _step_reads(s)):
        return True
    # Inside its own loop a node is a temporary only where it is read at its own index.
    own = home.indices[id(node)]
    return any(op is node and at != own for m in home.members for op, at in node_reads(m))


def _provides(step: Step) -> set:
    if isinstance(step, (Contraction, LinearSolve)):
        return {id(step.node)}
    if isinstance(step, RowStats):
        return {("stats", id(step.arg), step.axis)}
    return {id(m) for m in step.members}


def _needs(step: Step) -> set:
    keys = {id(op) for op, _ in _step_reads(step)}
    if isinstance(step, LoopGroup):
        keys |= {("stats", id(m.arg), m.axis) for m in step.members
                 if isinstance(m, (ir.LogSumExp, ir.Softmax))}
    return keys


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
        needs = _needs(late)
        if isinstance(late, LoopGroup) and late.dims == early.dims:
            others = moved_keys - mine
            if not (needs & others) and all(
                    id(op) not in mine
                    or (at == early.indices[id(op)] and id(op) not in early.reductions)
                    for op, at in _step_reads(late)):
                merged = LoopGroup(late.dims, early.members + late.members,
                                   {**early.indices, **late.indices},
                                   early.reductions | late.reductions)
                stay = [s for s in steps[i + 1:j] if all(s is not m for m in moved)]
                return steps[:i] + stay + [merged] + moved + steps[j + 1:]
        if needs & moved_keys:
            moved.append(late)
            moved_keys |= _provides(late)
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
    X, cols, rows, _ = one
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
        for op, at in node_reads(member):
            if op is z and [v for v in at if v is not None] != [0]:
                return None
    return RowStream(first, group, second, X, rows, cols, rows2, cols2)


MAX_LOOP_COST = 400
"""The most work one generated loop function holds, in ``loop_cost`` units (about one per
arithmetic statement; a call to an inlined helper such as ``_tanh`` counts as the dozen
statements it becomes). Numba's compile time grows faster than linearly with the length of
one function (a fused loop of 500 terms took 726 s), and linearly in the number of
functions: a longer loop is split into consecutive loops of at most this cost. See
``benchmarks/compile_cost.py``."""


def loop_cost(node: ir.Node) -> int:
    """The approximate size of the code a loop member becomes (see ``MAX_LOOP_COST``)."""
    if isinstance(node, ir.Map):
        calls = sum(1 for _ in sp.preorder_traversal(node.fn.expr)
                    if isinstance(_, sp.Function))
        return 1 + len(node.args) + 12 * calls
    if isinstance(node, (ir.LogSumExp, ir.Softmax)):
        return 14
    return 1 + len(node.children())


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
            part.members.append(member)
            part.indices[id(member)] = step.indices[id(member)]
            if id(member) in step.reductions:
                part.reductions.add(id(member))
            part_of[id(member)] = len(parts) - 1
            for op, _ in node_reads(member):
                home = part_of.get(id(op))
                if home is not None and home != len(parts) - 1:
                    materialized.add(id(op))  # computed in an earlier part: read from memory
        out.extend(parts)
    return out
