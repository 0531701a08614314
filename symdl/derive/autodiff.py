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
from symdl.ir.indexed import passthrough
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


# ---------------------------------------------------------------------------------------------
# Matrix functions (norms, singular values, symmetric eigenvalues)

_SPECTRAL_FACTORS = {"nuclear": ("polar",), "norm2": ("top",), "svdvals": ("svd_u", "svd_v"),
                     "eigvalsh": ("eigvecsh", "eigvecsh")}
"""Each differentiable matrix function -> the factors its first derivative is written in."""


def _reciprocal_or_zero(node: ir.Node) -> ir.Node:
    """``1/x`` entry by entry, and 0 at ``x = 0``: the gradient ``A/||A||_F`` of the Frobenius
    norm is then 0 at ``A = 0`` (a subgradient, PyTorch's convention), not 0/0."""
    x = sp.Dummy("x", real=True)
    return ir.map_(sp.Lambda(x, sp.Piecewise((1 / x, x > 0), (0, True))), node)


_FACTOR_NAMES = {"polar": "U V^T (the gradient of the nuclear norm)",
                 "top": "u_1 v_1^T (the gradient of the 2-norm)",
                 "svd_u": "the singular vectors (the gradient of svdvals)",
                 "svd_v": "the singular vectors (the gradient of svdvals)",
                 "eigh_gaps": "1/(lambda_j - lambda_i) (the derivative of the eigenvectors)"}


def _no_second_derivative(node: ir.MatrixFunction) -> UnsupportedError:
    return UnsupportedError(
        f"Hessians and Hessian-vector products through {_FACTOR_NAMES[node.kind]} are not "
        "supported: the nuclear and 2-norms, svdvals and eigenvectors have gradients only "
        "(eigenvalues, the Frobenius norm, trace, det, logdet and the inverse have Hessians "
        "too); derive without hessian=True and compile without hvp=True")


def _swap_first_axes(x: ir.Node) -> ir.Node:
    """``x`` with its first two axes swapped (the transpose of a matrix, seed axes kept)."""
    rest = tuple(range(2, x.rank))
    return ir.einsum([x], [(0, 1) + rest], (1, 0) + rest)


def _eigenvector_terms(node: ir.MatrixFunction, middle: list[ir.Node],
                       terms: list[tuple[list, tuple[int, ...]]]) -> ir.Node:
    """Half the sum of products ``V[0, 2] F[2, 3] middle`` (each term: the specs of
    ``middle`` and the output labels), from the eigenvector derivative ``dV = V (F ∘ (V^T dS
    V))``: ``F[i, j] = 1/(lambda_j - lambda_i)``, ``dS = (dA + dA^T)/2``."""
    gaps = ir.matrix_function(node.a, "eigh_gaps")
    return ir.add(*[ir.einsum([node, gaps, *middle], [(0, 2), (2, 3), *specs], out,
                              sp.Rational(1, 2)) for specs, out in terms])


@VJP.register(ir.MatrixFunction)
def _vjp_matrix_function(node: ir.MatrixFunction, adj: ir.Node, k: int) -> ir.Node:
    # ||A||_F: A/||A||; nuclear: U V^T; 2-norm: u_1 v_1^T; sigma_i: u_i v_i^T (so the sum over
    # i weighted by the adjoint is U diag(adj) V^T); lambda_i: v_i v_i^T.
    a = node.a
    if node.kind == "fro":
        return ir.einsum([adj, _reciprocal_or_zero(node), a], [(), (), (0, 1)], (0, 1))
    if node.kind == "cholesky":
        # L̄ -> G = L^{-T} Φ(L^T L̄) L^{-1}, and Ā = (G + G^T)/2: two linear solves with L^T.
        lower = node
        inner = ir.matrix_function(ir.einsum([lower, adj], [(2, 0), (2, 1)], (0, 1)),
                                   "tril_half")
        left = ir.solve(_transpose(lower), inner)  # L^{-T} Φ
        g = _transpose(ir.solve(_transpose(lower), _transpose(left)))  # (L^{-T} (L^{-T} Φ)^T)^T
        return ir.einsum([ir.add(g, _transpose(g))], [(0, 1)], (0, 1), sp.Rational(1, 2))
    if node.kind == "tril_half":  # linear: its adjoint keeps the upper triangle instead
        return _swap_first_axes(ir.matrix_function(_swap_first_axes(adj), "tril_half"))
    if node.kind == "eigvecsh":
        # V̄ -> G = V (F ∘ (V^T V̄)) V^T, and Ā = (G + G^T)/2 (the symmetric part is factored).
        v = node
        specs = [(4, 2), (4, 3), (1, 3)]
        return _eigenvector_terms(node, [v, adj, v], [(specs, (0, 1)), (specs, (1, 0))])
    factors = _SPECTRAL_FACTORS.get(node.kind)
    if factors is None:
        raise _no_second_derivative(node)
    if len(factors) == 1:
        return ir.einsum([adj, ir.matrix_function(a, factors[0])], [(), (0, 1)], (0, 1))
    left, right = (ir.matrix_function(a, f) for f in factors)
    return ir.einsum([left, adj, right], [(0, 2), (2, 3), (1, 2)], (0, 1))


@JVP.register(ir.MatrixFunction)
def _jvp_matrix_function(node: ir.MatrixFunction, tangents: list,
                         extra: tuple[int, ...]) -> ir.Node:
    # d||A||_F = <A, dA>/||A||; d nuclear = <U V^T, dA>; d sigma_1 = u_1^T dA v_1;
    # d sigma_i = u_i^T dA v_i; d lambda_i = v_i^T dA v_i.
    (t,) = tangents
    a = node.a
    if node.kind == "fro":
        ext = tuple(range(2, 2 + len(extra)))
        return ir.einsum([_reciprocal_or_zero(node), a, t], [(), (0, 1), (0, 1) + ext], ext)
    if node.kind == "cholesky":
        # dL = L Φ(L^{-1} dS L^{-T}), dS = (dA + dA^T)/2 over the matrix axes (seed axes kept).
        lower = node
        ext = tuple(range(2, 2 + len(extra)))
        sym = ir.einsum([ir.add(t, _swap_first_axes(t))], [(0, 1) + ext], (0, 1) + ext,
                        sp.Rational(1, 2))
        left = ir.solve(lower, sym)  # L^{-1} dS
        middle = _swap_first_axes(ir.solve(lower, _swap_first_axes(left)))
        phi = ir.matrix_function(middle, "tril_half")
        seed = tuple(range(3, 3 + len(extra)))  # label 2 is the contracted one
        return ir.einsum([lower, phi], [(0, 2), (2, 1) + seed], (0, 1) + seed)
    if node.kind == "tril_half":
        return ir.matrix_function(t, "tril_half")
    if node.kind == "eigvecsh":
        # dV[m, j] = Σ_i V[m, i] F[i, j] (V^T dS V)[i, j], dS = (dA + dA^T)/2.
        v = node
        ext = tuple(range(5, 5 + len(extra)))
        out = (0, 3) + ext
        return _eigenvector_terms(node, [v, t, v], [([(1, 2), (1, 4) + ext, (4, 3)], out),
                                                    ([(1, 2), (4, 1) + ext, (4, 3)], out)])
    factors = _SPECTRAL_FACTORS.get(node.kind)
    if factors is None:
        raise _no_second_derivative(node)
    if len(factors) == 1:
        ext = tuple(range(2, 2 + len(extra)))
        return ir.einsum([ir.matrix_function(a, factors[0]), t], [(0, 1), (0, 1) + ext], ext)
    left, right = (ir.matrix_function(a, f) for f in factors)
    ext = tuple(range(4, 4 + len(extra)))
    return ir.einsum([left, t, right, ir.ones((1,))], [(1, 0), (1, 2) + ext, (2, 0), (3,)],
                     (0, 3) + ext)



# ---------------------------------------------------------------------------------------------
# Computed positions (symdl.ir.indexed): windows, gathers, maxima. A read and a scatter are each
# other's transpose, as are a gather and its scatter-add: each one's derivative is the other.


@VJP.register(ir.AffineRead)
def _vjp_affine_read(node: ir.AffineRead, adj: ir.Node, k: int) -> ir.Node:
    return ir.affine_scatter(adj, node.arg.shape, node.index)


@VJP.register(ir.AffineScatter)
def _vjp_affine_scatter(node: ir.AffineScatter, adj: ir.Node, k: int) -> ir.Node:
    return ir.affine_read(adj, node.arg.shape, node.index)


@VJP.register(ir.Take)
def _vjp_take(node: ir.Take, adj: ir.Node, k: int) -> ir.Node:
    if k == 1:
        return ir.zero(node.indices.shape)  # integer positions: piecewise constant
    return ir.take_adjoint(adj, node.indices, node.table.shape[0])


@VJP.register(ir.TakeAdjoint)
def _vjp_take_adjoint(node: ir.TakeAdjoint, adj: ir.Node, k: int) -> ir.Node:
    if k == 1:
        return ir.zero(node.indices.shape)
    return ir.take(adj, node.indices)


def _spread_along(node: ir.Max, adj: ir.Node) -> ir.Node:
    """``adj`` (size 1 along the axis) sent to the first arg max along the axis."""
    labels = tuple(range(node.rank))
    kept = tuple(node.rank if a == node.axis else a for a in labels)
    return ir.einsum([ir.argmax_mask(node.arg, node.axis), adj], [labels, kept], labels)


@VJP.register(ir.Max)
def _vjp_max(node: ir.Max, adj: ir.Node, k: int) -> ir.Node:
    return _spread_along(node, adj)


@VJP.register(ir.ArgMaxMask)
def _vjp_argmax_mask(node: ir.ArgMaxMask, adj: ir.Node, k: int) -> ir.Node:
    return ir.zero(node.arg.shape)  # piecewise constant: 0 wherever it is differentiable


@JVP.register(ir.AffineRead)
def _jvp_affine_read(node: ir.AffineRead, tangents: list, extra: tuple) -> ir.Node:
    (t,) = tangents
    return ir.affine_read(t, tuple(node.dims) + tuple(extra),
                          passthrough(node.index, len(extra)))


@JVP.register(ir.AffineScatter)
def _jvp_affine_scatter(node: ir.AffineScatter, tangents: list, extra: tuple) -> ir.Node:
    (t,) = tangents
    return ir.affine_scatter(t, tuple(node.dims) + tuple(extra),
                             passthrough(node.index, len(extra)))


@JVP.register(ir.Take)
def _jvp_take(node: ir.Take, tangents: list, extra: tuple) -> ir.Node | None:
    t = tangents[0]
    return None if t is None else ir.take(t, node.indices)


@JVP.register(ir.TakeAdjoint)
def _jvp_take_adjoint(node: ir.TakeAdjoint, tangents: list, extra: tuple) -> ir.Node | None:
    t = tangents[0]
    return None if t is None else ir.take_adjoint(t, node.indices, node.rows)


@JVP.register(ir.Max)
def _jvp_max(node: ir.Max, tangents: list, extra: tuple) -> ir.Node:
    # The tangent at the first arg max: Σ_axis mask ⊙ t, the axis kept with size 1.
    (t,) = tangents
    labels = tuple(range(node.rank))
    size_one = node.rank
    ext = tuple(range(node.rank + 1, node.rank + 1 + len(extra)))
    kept = tuple(size_one if a == node.axis else a for a in labels)
    return ir.einsum([ir.argmax_mask(node.arg, node.axis), t, ir.ones((1,))],
                     [labels, labels + ext, (size_one,)], kept + ext)


@JVP.register(ir.ArgMaxMask)
def _jvp_argmax_mask(node: ir.ArgMaxMask, tangents: list, extra: tuple) -> None:
    return None  # piecewise constant



# ---------------------------------------------------------------------------------------------
# Recurrences (``ir.Scan``): backprop through time, and tangents carried along


def _placeholder(name: str, shape: tuple) -> ir.Leaf:
    """A step's placeholder: a leaf that only the scan binding it gives a value."""
    symbol = (sp.MatrixSymbol(name, *shape) if len(shape) == 2
              else sp.IndexedBase(name, shape=shape) if shape else sp.Symbol(name, real=True))
    return ir.leaf(name, shape, symbol)


def _state_name(carry: ir.Leaf) -> str:
    name = carry.name
    return name[:-len("_prev")] if name.endswith("_prev") and len(name) > 5 else name


def _check_differentiable_scan(node: ir.Scan) -> None:
    if (not node.carry or node.reverse or node.mode != "stack" or any(node.lags)
            or node.emit not in node.step):
        raise UnsupportedError(
            "reverse mode differentiates a forward recurrence h_t = f(h_{t-1}, x_t) stacked "
            "over t; this scan (a derivative of one) is differentiated in forward mode only")


def _states(node: ir.Scan) -> list[ir.Node]:
    """The stored states of each carry, stacked over t: the scan itself for the carry it
    emits, the same recurrence emitting the other carries (an LSTM's cell state)."""
    return [node if node.emit is s else ir.scan(
        carry=node.carry, init=node.init, step=node.step, slots=node.slots, seqs=node.seqs,
        emit=s, length=node.length) for s in node.step]


def _pullback(node: ir.Scan, cots: list[ir.Node], targets: list[ir.Node]
              ) -> tuple[list[ir.Node], tuple, tuple, tuple, tuple]:
    """The VJPs of the step along the cotangents ``cots`` (one per carry) with respect to
    ``targets`` (carries, slots or closure nodes), over placeholders that read the stored
    states: ``c_{t-1}`` (lagged, ``c_0`` first) and ``c_t`` itself, so that a step whose
    derivative is written on its output (``1 - h_t ⊙ h_t`` for tanh) is not computed again.
    Returns the VJPs and the slots, sequences, lags and first values they read."""
    states = _states(node)
    now = [_placeholder(f"{_state_name(c)}_t", c.shape) for c in node.carry]
    total = ir.add(*[ir.einsum([s, a], [tuple(range(s.rank))] * 2, ())
                     for s, a in zip(node.step, cots, strict=True)])
    by_id, _ = reverse(total, list(targets))
    pulled = ir.substitute([by_id[id(t)] for t in targets],
                           {id(s): n for s, n in zip(node.step, now, strict=True)})
    m = len(node.carry)
    slots = node.carry + tuple(now) + node.slots
    seqs = tuple(states) + tuple(states) + node.seqs
    lags = (1,) * m + (0,) * m + (0,) * len(node.slots)
    bounds = node.init + (None,) * (m + len(node.slots))
    return pulled, slots, seqs, lags, bounds


def _adjoint_scan(node: ir.Scan, adj: ir.Node, mode: str, which: int) -> ir.Node:
    """The adjoint recurrence, run backwards: ``δ_t = Ḡ_t + c_t``, ``c_{t-1} = J^T δ_t`` for
    each carry (``Ḡ`` only on the carry the scan emits). ``mode="stack"`` gives the adjoints
    ``δ_t`` of carry ``which``, ``"final"`` the adjoint of its initial value."""
    emitted = node.step.index(node.emit)
    names = [_state_name(c) for c in node.carry]
    g = _placeholder(f"d{names[emitted]}_out", node.emit.shape)
    nexts = tuple(_placeholder(f"d{name}_next", c.shape)
                  for name, c in zip(names, node.carry, strict=True))
    deltas = [ir.add(g, c) if j == emitted else c for j, c in enumerate(nexts)]
    sent_down, slots, seqs, lags, bounds = _pullback(node, deltas, list(node.carry))
    emit = nexts[which] if mode == "final" else deltas[which]
    return ir.scan(carry=nexts, init=tuple(ir.zero(c.shape) for c in node.carry),
                   step=tuple(sent_down), slots=(g,) + slots, seqs=(adj,) + seqs,
                   lags=(0,) + lags, bounds=(None,) + bounds, emit=emit,
                   length=node.length, mode=mode, reverse=True)


@VJP.register(ir.Scan)
def _vjp_scan(node: ir.Scan, adj: ir.Node, k: int) -> ir.Node:
    _check_differentiable_scan(node)
    m = len(node.carry)
    if k < m:  # an initial state
        return _adjoint_scan(node, adj, "final", k)
    deltas = [_adjoint_scan(node, adj, "stack", j) for j in range(m)]
    names = [_state_name(c) for c in node.carry]
    cots = [_placeholder(f"d{name}_t", c.shape) for name, c in zip(names, node.carry,
                                                                    strict=True)]
    if k < m + len(node.seqs):  # a sequence read at t: its adjoint at each t, stacked
        target, mode = node.slots[k - m], "stack"
    else:  # a parameter (or anything else read at every step): summed over t
        target, mode = node.children()[k], "sum"
    (pulled,), slots, seqs, lags, bounds = _pullback(node, cots, [target])
    return ir.scan(slots=tuple(cots) + slots, seqs=tuple(deltas) + seqs,
                   lags=(0,) * m + lags, bounds=(None,) * m + bounds, emit=pulled,
                   length=node.length, mode=mode)


@JVP.register(ir.Scan)
def _jvp_scan(node: ir.Scan, tangents: list, extra: tuple[int, ...]) -> ir.Node:
    # A scan that carries each state and its tangent: the step's forward-mode derivative
    # along the tangents of the carries, the slots and the closure.
    extra_dims = _extra_dims(tangents, node)
    m = len(node.carry)
    seeds: dict[int, ir.Node] = {}
    t_carry = []
    t_init = []
    for j, c in enumerate(node.carry):
        tc = _placeholder(f"{c.name}_tan", tuple(c.shape) + extra_dims)
        seeds[id(c)] = tc
        t_carry.append(tc)
        t_init.append(tangents[j] if tangents[j] is not None else ir.zero(tc.shape))
    k = m + len(node.seqs)
    bound_tangents = []
    for b in node.bounds:
        if b is None:
            bound_tangents.append(None)
        else:
            bound_tangents.append(tangents[k])
            k += 1
    t_slots, t_seqs, t_lags, t_bounds = [], [], [], []
    for i, (slot, lag) in enumerate(zip(node.slots, node.lags, strict=True)):
        seq_t, bound_t = tangents[m + i], bound_tangents[i]
        if seq_t is None and bound_t is None:
            continue
        ts = _placeholder(f"{slot.name}_tan", tuple(slot.shape) + extra_dims)
        seeds[id(slot)] = ts
        t_slots.append(ts)
        t_seqs.append(seq_t if seq_t is not None
                      else ir.zero((node.length,) + tuple(ts.shape)))
        t_lags.append(lag)
        t_bounds.append(None if lag == 0 else
                        bound_t if bound_t is not None else ir.zero(ts.shape))
    for c, t in zip(node.closure, tangents[k:], strict=True):
        if t is not None:
            seeds[id(c)] = t
    t_steps = [forward(s, seeds, extra) for s in node.step]
    t_emit = forward(node.emit, seeds, extra)
    return ir.scan(carry=node.carry + tuple(t_carry), init=node.init + tuple(t_init),
                   step=node.step + tuple(t_steps), slots=node.slots + tuple(t_slots),
                   seqs=node.seqs + tuple(t_seqs), lags=node.lags + tuple(t_lags),
                   bounds=node.bounds + tuple(t_bounds), emit=t_emit, length=node.length,
                   mode=node.mode, reverse=node.reverse)


def _extra_dims(tangents: list, node: ir.Scan) -> tuple:
    """The seed axes' sizes, read off any tangent (its shape beyond its node's)."""
    for t, child in zip(tangents, node.children(), strict=True):
        if t is not None:
            return tuple(t.shape[child.rank:])
    raise ValueError("a scan with no tangent has no forward derivative")
