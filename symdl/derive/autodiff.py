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
    labels, lane = ir.lane_labels(node.rank, node.axis)
    return ir.einsum([adj, p], [lane, labels], labels)


@VJP.register(ir.Softmax)
def _vjp_softmax(node: ir.Softmax, adj: ir.Node, k: int) -> ir.Node:
    # z̄ = p ⊙ (p̄ - Σ_axis p̄ ⊙ p)
    p = node
    labels, lane = ir.lane_labels(node.rank, node.axis)
    direct = ir.hadamard(adj, p)
    through_sum = ir.einsum([p, adj, p], [labels, lane, lane], labels, -1)
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
    labels, keep = ir.lane_labels(node.rank, node.axis)
    size_one = node.rank  # the kept axis's label (size 1)
    ext = tuple(range(node.rank + 1, node.rank + 1 + len(extra)))
    return ir.einsum([p, t, ir.ones((1,))], [labels, labels + ext, (size_one,)], keep + ext)


@JVP.register(ir.Softmax)
def _jvp_softmax(node: ir.Softmax, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    (t,) = tangents
    labels, lane = ir.lane_labels(node.rank, node.axis)
    ext = tuple(range(node.rank + 1, node.rank + 1 + len(extra)))
    direct = ir.einsum([node, t], [labels, labels + ext], labels + ext)
    through_sum = ir.einsum([node, node, t], [labels, lane, lane + ext], labels + ext, -1)
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
