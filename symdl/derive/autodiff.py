"""Derivatives on the IR: reverse mode (adjoints, backprop) and forward mode (tangents).

Reverse mode walks the DAG from the scalar output back to the parameters. Each node's
adjoint is the sum of what its consumers send it; the adjoint of a user's named intermediate
is itself named (``Z1`` -> ``dZ1``), which keeps every backprop equation small.

Forward mode carries, for each node, its derivative along a seed: either a direction tensor
(the Hessian-vector product is the forward derivative of the gradient along ``v``), or the
identity on a parameter's entries, which gives a Jacobian with the parameter's axes appended
(the Hessian block ``H[p, q]`` is the Jacobian of the gradient of ``p`` with respect to
``q``). Kronecker deltas from the seed are eliminated by ``ir.einsum`` as they appear.

Each node kind has one small rule per mode, registered in the tables ``VJP`` (reverse) and
``JVP`` (forward) with ``@VJP.register(ir.Einsum)``; a kind with no rule raises
``MissingRuleError`` (see ``symdl.ir.rules``).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from symdl import ir
from symdl.errors import UnsupportedError
from symdl.ir.rules import Rules
from symdl.primitives.registry import output_derivative, stabilize


def partial_derivatives(fn: sp.Lambda) -> list[sp.Lambda]:
    """The partial derivatives of a scalar ``Lambda``, each in stable form."""
    # relu'' and sign' are DiracDelta: zero wherever the derivative exists (the stated
    # convention at kinks), so it is taken as 0.
    return [sp.Lambda(fn.variables, stabilize(sp.diff(fn.expr, v)).replace(
        sp.DiracDelta, lambda *args: sp.Integer(0))) for v in fn.variables]


def _elementwise_factor(node: ir.Map, k: int) -> ir.Node:
    """∂node/∂args[k] as a tensor; in terms of the output where that reads better (tanh)."""
    fn = node.fn
    in_output = output_derivative(fn.expr.func)
    if len(fn.variables) == 1 and in_output is not None:
        (x,) = fn.variables
        if fn.expr.args == (x,):
            y = sp.Dummy("y")
            return ir.map_(sp.Lambda(y, in_output(y)), node)
    return ir.map_(partial_derivatives(fn)[k], *node.args)


# ---------------------------------------------------------------------------------------------
# Reverse mode

VJP: Rules[Callable[[ir.Node, ir.Node, int], ir.Node]] = Rules("reverse-mode differentiation")
"""node kind -> (node, adjoint of node, operand position) -> contribution to that operand."""


@VJP.register(ir.Leaf, ir.Ones, ir.Zero, ir.Identity)
def _vjp_leaf(node: ir.Node, adj: ir.Node, k: int) -> ir.Node:
    # Backprop ends at a leaf: it has no operand to send a contribution to.
    raise IndexError(f"{type(node).__name__} has no operand {k}")


@VJP.register(ir.Einsum)
def _vjp_einsum(node: ir.Einsum, adj: ir.Node, k: int) -> ir.Node:
    operands = list(node.operands)
    specs = list(node.specs)
    target_spec = specs[k]
    del operands[k]
    del specs[k]
    dims = node.label_dims()
    fresh = max(dims, default=-1) + 1
    # A repeated label (a diagonal) in the operand gets a delta joining its copies.
    out: list[int] = []
    for lab in target_spec:
        if lab in out:
            operands.append(ir.identity(dims[lab]))
            specs.append((lab, fresh))
            out.append(fresh)
            fresh += 1
        else:
            out.append(lab)
    operands.append(adj)
    specs.append(node.out)
    present = {lab for s in specs for lab in s}
    missing = tuple(lab for lab in out if lab not in present)
    if missing:
        operands.append(ir.ones(tuple(dims[lab] for lab in missing)))
        specs.append(missing)
    return ir.einsum(operands, specs, tuple(out), node.coeff)


@VJP.register(ir.Map)
def _vjp_map(node: ir.Map, adj: ir.Node, k: int) -> ir.Node:
    return ir.hadamard(adj, _elementwise_factor(node, k))


@VJP.register(ir.Add)
def _vjp_add(node: ir.Add, adj: ir.Node, k: int) -> ir.Node:
    return adj


@VJP.register(ir.LogSumExp)
def _vjp_logsumexp(node: ir.LogSumExp, adj: ir.Node, k: int) -> ir.Node:
    # d lse_i / d z_ij = softmax_ij: the adjoint spreads along the axis, weighted by softmax.
    p = ir.softmax(node.arg, node.axis)
    spec = (0, 2) if node.axis == 1 else (2, 1)
    return ir.einsum([adj, p], [spec, (0, 1)], (0, 1))


@VJP.register(ir.Softmax)
def _vjp_softmax(node: ir.Softmax, adj: ir.Node, k: int) -> ir.Node:
    # z̄ = p ⊙ (p̄ - Σ_axis p̄ ⊙ p)
    p = node
    lane = (0, 2) if node.axis == 1 else (2, 1)
    direct = ir.hadamard(adj, p)
    through_sum = ir.einsum([p, adj, p], [(0, 1), lane, lane], (0, 1), -1)
    return ir.add(direct, through_sum)


@VJP.register(ir.Named)
def _vjp_named(node: ir.Named, adj: ir.Node, k: int) -> ir.Node:
    return adj


def _transpose(a: ir.Node) -> ir.Node:
    return ir.einsum([a], [(0, 1)], (1, 0))


@VJP.register(ir.Solve)
def _vjp_solve(node: ir.Solve, adj: ir.Node, k: int) -> ir.Node:
    # X = A^{-1} B: B̄ = A^{-T} X̄ and Ā = -B̄ X^T (summed over every axis of B after the first).
    b_bar = ir.solve(_transpose(node.a), adj, node.spd)
    if k == 1:
        return b_bar
    rest = tuple(range(2, 1 + node.rank))
    return ir.einsum([b_bar, node], [(0,) + rest, (1,) + rest], (0, 1), -1)


def _inverse_transpose(a: ir.Node) -> ir.Node:
    """``A^{-T}`` as the linear solve ``(A^T)^{-1} I``: kernels factor, never invert."""
    return ir.solve(_transpose(a), ir.identity(a.shape[0]))


@VJP.register(ir.Det)
def _vjp_det(node: ir.Det, adj: ir.Node, k: int) -> ir.Node:
    # d log|det A| = tr(A^{-1} dA): Ā = ā A^{-T}; and d det A = det A tr(A^{-1} dA).
    scale = [adj] if node.log else [adj, node]
    return ir.einsum([*scale, _inverse_transpose(node.a)], [()] * len(scale) + [(0, 1)],
                     (0, 1))


def dependents(roots: list[ir.Node], targets: list[ir.Node]) -> set[int]:
    """Ids of the nodes under ``roots`` that depend on any of ``targets``."""
    depends = {id(t) for t in targets}
    for node in ir.topological_order(roots):
        if any(id(c) in depends for c in node.children()):
            depends.add(id(node))
    return depends


def reverse(
    output: ir.Node,
    wrt: list[ir.Node],
    adjoint_name: Callable[[ir.Named], tuple[str, sp.Basic]] | None = None,
) -> tuple[dict[int, ir.Node], list[tuple[ir.Named, ir.Node]]]:
    """Reverse-mode derivative of the scalar ``output``.

    Returns the adjoint of every node in ``wrt`` (by id; ``Zero`` where there is no
    dependence) and the adjoints of the named intermediates in the order backprop computes
    them, each wrapped in its own ``Named`` node when ``adjoint_name`` is given.
    """
    depends = dependents([output], wrt)
    wanted = {id(w) for w in wrt}
    adjoint_terms: dict[int, list[ir.Node]] = {id(output): [ir.scalar(1)]}
    result: dict[int, ir.Node] = {}
    named_adjoints: list[tuple[ir.Named, ir.Node]] = []
    for node in reversed(ir.topological_order([output])):
        terms = adjoint_terms.pop(id(node), None)
        if terms is None or id(node) not in depends:
            continue
        adj = ir.add(*terms)
        named_step = isinstance(node, ir.Named) and node is not output
        if named_step and adjoint_name is not None and not ir.is_zero(adj):
            name, symbol = adjoint_name(node)
            adj = ir.named(name, adj, symbol)
            named_adjoints.append((node, adj))
        if id(node) in wanted:
            result[id(node)] = adj
        if ir.is_zero(adj):
            continue
        rule = VJP.rule(node)
        for k, child in enumerate(node.children()):
            if id(child) in depends:
                adjoint_terms.setdefault(id(child), []).append(rule(node, adj, k))
    for w in wrt:
        result.setdefault(id(w), ir.zero(w.shape))
    return result, named_adjoints


# ---------------------------------------------------------------------------------------------
# Forward mode

JVP: Rules[Callable[[ir.Node, list, tuple[int, ...]], ir.Node | None]] = Rules(
    "forward-mode differentiation")
"""node kind -> (node, tangents of its children or None, seed axes) -> tangent of the node."""


def _extend(spec: tuple[int, ...], extra: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(spec) + tuple(extra)


@JVP.register(ir.Leaf, ir.Ones, ir.Zero, ir.Identity)
def _jvp_leaf(node: ir.Node, tangents: list, extra: tuple[int, ...]) -> None:
    # A leaf that is not seeded is a constant: it has no tangent.
    return None


@JVP.register(ir.Einsum)
def _jvp_einsum(node: ir.Einsum, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    base = max(node.label_dims(), default=-1) + 1
    ext = tuple(range(base, base + len(extra)))
    terms = []
    for k, t in enumerate(tangents):
        if t is None:
            continue
        specs = list(node.specs)
        operands = list(node.operands)
        operands[k] = t
        specs[k] = _extend(specs[k], ext)
        terms.append(ir.einsum(operands, specs, _extend(node.out, ext), node.coeff))
    return ir.add(*terms)


@JVP.register(ir.Map)
def _jvp_map(node: ir.Map, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    labels = tuple(range(node.rank))
    ext = tuple(range(node.rank, node.rank + len(extra)))
    terms = [
        ir.einsum([_elementwise_factor(node, k), t], [labels, labels + ext], labels + ext)
        for k, t in enumerate(tangents)
        if t is not None
    ]
    return ir.add(*terms)


@JVP.register(ir.Add)
def _jvp_add(node: ir.Add, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    return ir.add(*[t for t in tangents if t is not None])


@JVP.register(ir.LogSumExp)
def _jvp_logsumexp(node: ir.LogSumExp, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    (t,) = tangents
    p = ir.softmax(node.arg, node.axis)
    ext = tuple(range(3, 3 + len(extra)))
    keep = (0, 2) if node.axis == 1 else (2, 1)
    return ir.einsum([p, t, ir.ones((1,))], [(0, 1), (0, 1) + ext, (2,)], keep + ext)


@JVP.register(ir.Softmax)
def _jvp_softmax(node: ir.Softmax, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    (t,) = tangents
    ext = tuple(range(3, 3 + len(extra)))
    lane = (0, 2) if node.axis == 1 else (2, 1)
    direct = ir.einsum([node, t], [(0, 1), (0, 1) + ext], (0, 1) + ext)
    through_sum = ir.einsum([node, node, t], [(0, 1), lane, lane + ext], (0, 1) + ext, -1)
    return ir.add(direct, through_sum)


@JVP.register(ir.Named)
def _jvp_named(node: ir.Named, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    return tangents[0]


@JVP.register(ir.Solve)
def _jvp_solve(node: ir.Solve, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    # d(A^{-1} B) = A^{-1} (dB - dA X).
    t_a, t_b = tangents
    rank = node.rank
    rest = tuple(range(2, 1 + rank))
    ext = tuple(range(1 + rank, 1 + rank + len(extra)))
    terms = [] if t_b is None else [t_b]
    if t_a is not None:
        terms.append(ir.einsum([t_a, node], [(0, 1) + ext, (1,) + rest], (0,) + rest + ext, -1))
    return ir.solve(node.a, ir.add(*terms), node.spd)


@JVP.register(ir.Det)
def _jvp_det(node: ir.Det, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    # d log|det A| = tr(A^{-1} dA), the trace over the matrix axes of a solve with the tangent
    # (seed axes kept); d det A = det A tr(A^{-1} dA).
    (t_a,) = tangents
    ext = tuple(range(1, 1 + len(extra)))
    solved = ir.solve(node.a, t_a)
    if node.log:
        return ir.einsum([solved], [(0, 0) + ext], ext)
    return ir.einsum([node, solved], [(), (0, 0) + ext], ext)


def forward(root: ir.Node, seeds: dict[int, ir.Node], extra: tuple) -> ir.Node:
    """Forward-mode derivative of ``root``: its shape plus the ``extra`` axes of the seeds.

    ``seeds`` maps a leaf's id to its tangent, whose shape is the leaf's shape plus ``extra``.
    """
    tangents: dict[int, ir.Node | None] = {}
    for node in ir.topological_order([root]):
        if id(node) in seeds:
            tangents[id(node)] = seeds[id(node)]
            continue
        child_tangents = [tangents.get(id(c)) for c in node.children()]
        if all(t is None for t in child_tangents):
            tangents[id(node)] = None
            continue
        tangents[id(node)] = JVP(node, child_tangents, extra)
    result = tangents[id(root)]
    if result is None:
        return ir.zero(tuple(root.shape) + tuple(extra))
    return result


def identity_seed(node: ir.Node) -> ir.Node:
    """The tangent of a leaf with respect to its own entries: δ over each axis, shape s + s."""
    rank = node.rank
    if rank == 0:
        return ir.scalar(1)
    operands = [ir.identity(d) for d in node.shape]
    specs = [(a, rank + a) for a in range(rank)]
    return ir.einsum(operands, specs, tuple(range(2 * rank)))


def jacobian(root: ir.Node, leaf: ir.Node) -> ir.Node:
    """∂root/∂leaf as a tensor of shape ``root.shape + leaf.shape``."""
    return forward(root, {id(leaf): identity_seed(leaf)}, tuple(leaf.shape))


def directional(root: ir.Node, directions: dict[int, ir.Node]) -> ir.Node:
    """The derivative of ``root`` along ``directions`` (leaf id -> same-shape tensor)."""
    return forward(root, directions, ())


# ---------------------------------------------------------------------------------------------
# Recurrences (``ir.Scan``): backprop through time


def _placeholder(name: str, shape: tuple) -> ir.Leaf:
    """A step's placeholder: a leaf that only the scan binding it gives a value."""
    symbol = (sp.MatrixSymbol(name, *shape) if len(shape) == 2
              else sp.IndexedBase(name, shape=shape) if shape else sp.Symbol(name, real=True))
    return ir.leaf(name, shape, symbol)


def _cotangent_pullback(outputs: ir.Node, cot: ir.Node, wrt: list[ir.Node]) -> list[ir.Node]:
    """The VJPs ``J^T cot`` of the graph ``outputs`` with respect to each of ``wrt``."""
    labels = tuple(range(outputs.rank))
    total = ir.einsum([outputs, cot], [labels, labels], ())
    by_id, _ = reverse(total, wrt)
    return [by_id[id(w)] for w in wrt]


def _check_differentiable_scan(node: ir.Scan) -> None:
    if (node.carry is None or node.reverse or node.mode != "stack" or node.emit is not node.step
            or any(node.lags)):
        raise UnsupportedError(
            "only a forward recurrence h_t = f(h_{t-1}, x_t) stacked over t is differentiated "
            "(a derivative of a derivative through a scan is not derived yet)")


def _state_name(node: ir.Scan) -> str:
    name = node.carry.name
    return name[:-len("_prev")] if name.endswith("_prev") and len(name) > 5 else name


def _pullback_parts(node: ir.Scan, cot: ir.Leaf, targets: list[ir.Node]
                    ) -> tuple[list[ir.Node], tuple, tuple, tuple, tuple]:
    """The VJPs of the step ``h_t = f(h_{t-1}, x_t)`` along ``cot`` with respect to
    ``targets`` (the carry, slots or closure nodes), over placeholders that read the stored
    states: ``h_{t-1}`` (``H`` lagged, ``h_0`` first) and ``h_t`` itself, so that a step
    whose derivative is written on its output (``1 - h_t ⊙ h_t`` for tanh) is not computed
    again. Returns the VJPs and the slots, sequences, lags and first values they read."""
    name = _state_name(node)
    carry = node.carry
    before = _placeholder(f"{name}_prev", carry.shape)
    now = _placeholder(f"{name}_t", carry.shape)
    moved = ir.substitute([node.step], {id(carry): before})[0]
    wanted = [before if t is carry else t for t in targets]
    pulled = _cotangent_pullback(moved, cot, wanted)
    pulled = ir.substitute(pulled, {id(moved): now})
    slots = (before, now) + node.slots
    seqs = (node, node) + node.seqs
    lags = (1, 0) + (0,) * len(node.slots)
    bounds = (node.init, None) + (None,) * len(node.slots)
    return pulled, slots, seqs, lags, bounds


def _adjoint_scan(node: ir.Scan, adj: ir.Node, mode: str) -> ir.Node:
    """The adjoint recurrence, run backwards: ``δ_t = Ḡ_t + c_t``, ``c_{t-1} = J_h^T δ_t``.
    ``mode="stack"`` gives the adjoints ``δ_t``, ``"final"`` the adjoint of ``h_0``."""
    name = _state_name(node)
    g = _placeholder(f"d{name}_out", node.carry.shape)
    c = _placeholder(f"d{name}_next", node.carry.shape)
    a = ir.add(g, c)
    (sent_down,), slots, seqs, lags, bounds = _pullback_parts(node, a, [node.carry])
    return ir.scan(carry=c, init=ir.zero(node.carry.shape), slots=(g,) + slots,
                   seqs=(adj,) + seqs, lags=(0,) + lags, bounds=(None,) + bounds,
                   step=sent_down, emit=a, length=node.length, mode=mode, reverse=True)


@VJP.register(ir.Scan)
def _vjp_scan(node: ir.Scan, adj: ir.Node, k: int) -> ir.Node:
    _check_differentiable_scan(node)
    if k == 0:  # h_0
        return _adjoint_scan(node, adj, "final")
    deltas = _adjoint_scan(node, adj, "stack")
    a = _placeholder(f"d{_state_name(node)}_t", node.carry.shape)
    child = node.children()[k]
    if 1 <= k <= len(node.seqs):  # a sequence read at t: its adjoint at each t, stacked
        target, mode = node.slots[k - 1], "stack"
    else:  # a parameter (or anything else read at every step): summed over t
        target, mode = child, "sum"
    (pulled,), slots, seqs, lags, bounds = _pullback_parts(node, a, [target])
    return ir.scan(carry=None, init=None, slots=(a,) + slots, seqs=(deltas,) + seqs,
                   lags=(0,) + lags, bounds=(None,) + bounds, step=None, emit=pulled,
                   length=node.length, mode=mode)


@JVP.register(ir.Scan)
def _jvp_scan(node: ir.Scan, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    raise UnsupportedError(
        "forward-mode derivatives through a recurrence (symdl.scan) are not derived yet: "
        "Hessians and Hessian-vector products of a scanned model are not available; "
        "gradients are")
