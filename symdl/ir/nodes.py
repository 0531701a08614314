"""The tensor IR: index notation with symbolic shapes.

Every value is a tensor whose dimensions are SymPy expressions (``n``, ``d``, ``1``). There are
few node kinds, and one of them does most of the work:

* ``Einsum``: a product of operands, each indexed by integer labels, summed over the labels
  that are not in the output, times a scalar coefficient. Matrix products, transposes,
  Hadamard products, traces, sums over axes, broadcasts, outer products and Kronecker deltas
  are all einsums. The derivative of an einsum is again an einsum, which is what lets one
  derivation serve every size (Laue, Mitterreiter and Giesen, NeurIPS 2018).
* ``Map``: a scalar SymPy function applied entry by entry to operands of one shape.
* ``Add``: a sum of tensors of one shape.
* ``LogSumExp`` and ``Softmax`` along any axis of a tensor of any rank: stable primitives.
* ``Solve``: ``A^{-1} B``, a linear solve (the matrix inverse is ``A^{-1} I``).
* ``Det``: ``det A`` or ``log |det A|``, a scalar (LU or Cholesky in kernels).
* ``Named``: a user's intermediate (``Z1``) or its adjoint (``dZ1``); it blocks inlining so
  equations stay small.
* Leaves: ``Leaf`` (an input or parameter), ``Ones``, ``Identity`` and ``Zero``.

Nodes are immutable and interned: building the same node twice returns the same object, so
shared subexpressions are shared (common-subexpression elimination for free). The smart
constructors (``einsum``, ``add``, ``map_``) simplify as they build: Kronecker deltas are
eliminated, nested products flattened, ones folded and zeros dropped.
"""

from __future__ import annotations

import atexit
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import sympy as sp

from symdl.errors import ShapeMismatchError
from symdl.ir.rules import Rules

Shape = tuple[sp.Expr, ...]
Labels = tuple[int, ...]

_INTERNED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# Emptied before interpreter shutdown: removing an entry hashes its SymPy key, which fails
# once modules are being torn down (noise on stderr at exit).
atexit.register(_INTERNED.clear)


def _key(value: object) -> object:
    if isinstance(value, Node):
        return ("node", id(value))
    if isinstance(value, tuple):
        return tuple(_key(v) for v in value)
    return value


def _intern(node: Node) -> Node:
    key = (type(node),) + tuple(_key(getattr(node, f)) for f in node._fields)
    found = _INTERNED.get(key)
    if found is not None:
        return found
    _INTERNED[key] = node
    return node


@dataclass(frozen=True, eq=False)
class Node:
    """A tensor-valued expression. Compare nodes with ``is``: they are interned."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # The shape is computed once, when the node is built: its children are built before
        # it, so this is one step, whereas a property that asked the child would recurse
        # through a chain of a thousand named steps.
        object.__setattr__(self, "_shape", self._compute_shape())

    @property
    def shape(self) -> Shape:
        return self._shape

    def _compute_shape(self) -> Shape:
        return self.dims  # subclasses without a ``dims`` field override this

    @property
    def rank(self) -> int:
        return len(self.shape)

    def children(self) -> tuple[Node, ...]:
        return ()


@dataclass(frozen=True, eq=False)
class Leaf(Node):
    """A named input or parameter: ``symbol`` is the SymPy object the user wrote."""

    name: str
    dims: Shape
    symbol: sp.Basic = field(repr=False)
    _fields: ClassVar[tuple[str, ...]] = ("name", "dims", "symbol")


@dataclass(frozen=True, eq=False)
class Ones(Node):
    """A tensor of ones: broadcasts and sums are einsums with it."""

    dims: Shape
    _fields: ClassVar[tuple[str, ...]] = ("dims",)


@dataclass(frozen=True, eq=False)
class Zero(Node):
    """A tensor of zeros: what a derivative is where there is no dependence."""

    dims: Shape
    _fields: ClassVar[tuple[str, ...]] = ("dims",)


@dataclass(frozen=True, eq=False)
class Identity(Node):
    """The Kronecker delta ``δ[a, b]`` over one dimension."""

    dim: sp.Expr
    _fields: ClassVar[tuple[str, ...]] = ("dim",)

    def _compute_shape(self) -> Shape:
        return (self.dim, self.dim)


@dataclass(frozen=True, eq=False)
class Einsum(Node):
    """``coeff * Σ_{labels not in out} Π_k operands[k][specs[k]]``."""

    operands: tuple[Node, ...]
    specs: tuple[Labels, ...]
    out: Labels
    coeff: sp.Expr
    dims: Shape
    _fields: ClassVar[tuple[str, ...]] = ("operands", "specs", "out", "coeff")

    def children(self) -> tuple[Node, ...]:
        return self.operands

    def label_dims(self) -> dict[int, sp.Expr]:
        return _label_dims(self.operands, self.specs)


@dataclass(frozen=True, eq=False)
class Map(Node):
    """``fn`` applied entry by entry; ``fn`` is a ``sympy.Lambda`` of ``len(args)`` scalars."""

    fn: sp.Lambda
    args: tuple[Node, ...]
    _fields: ClassVar[tuple[str, ...]] = ("fn", "args")

    def _compute_shape(self) -> Shape:
        return self.args[0].shape

    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True, eq=False)
class Add(Node):
    terms: tuple[Node, ...]
    _fields: ClassVar[tuple[str, ...]] = ("terms",)

    def _compute_shape(self) -> Shape:
        return self.terms[0].shape

    def children(self) -> tuple[Node, ...]:
        return self.terms


@dataclass(frozen=True, eq=False)
class LogSumExp(Node):
    """``log Σ_j exp(arg[..., j, ...])`` along ``axis`` of a tensor of any rank, kept as a
    size-1 axis. Entries of ``-inf`` (masks) are ignored; a lane of only ``-inf`` gives
    ``-inf``."""

    arg: Node
    axis: int
    _fields: ClassVar[tuple[str, ...]] = ("arg", "axis")

    def _compute_shape(self) -> Shape:
        dims = list(self.arg.shape)
        dims[self.axis] = sp.Integer(1)
        return tuple(dims)

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


@dataclass(frozen=True, eq=False)
class Softmax(Node):
    """``exp(arg) / Σ exp(arg)`` along ``axis`` of a tensor of any rank. Entries of ``-inf``
    (masks) get probability 0; a lane of only ``-inf`` is all zeros (no NaN: a fully masked
    row of padding contributes nothing, to values or gradients)."""

    arg: Node
    axis: int
    _fields: ClassVar[tuple[str, ...]] = ("arg", "axis")

    def _compute_shape(self) -> Shape:
        return self.arg.shape

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


@dataclass(frozen=True, eq=False)
class Solve(Node):
    """``A^{-1} B``: the solution ``X`` of ``A X = B`` for a square ``A``. ``B`` may have more
    axes than two (tangents carry seed axes): each column of ``B`` reshaped to its first
    axis by the rest is solved for."""

    a: Node
    b: Node
    spd: bool = False
    """``A`` is symmetric positive definite by construction (a Gram matrix ``X^T X``): solved
    by Cholesky, which fails, as a typed error, where ``A`` is numerically singular."""
    _fields: ClassVar[tuple[str, ...]] = ("a", "b", "spd")

    def _compute_shape(self) -> Shape:
        return self.b.shape

    def children(self) -> tuple[Node, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=False)
class Det(Node):
    """The determinant of a square matrix ``a`` (a scalar): ``log |det a|`` when ``log``,
    else ``det a``. ``spd``: the user declared ``a`` symmetric positive definite, so kernels
    factor it by Cholesky (LU with the sign otherwise)."""

    a: Node
    log: bool
    spd: bool
    _fields: ClassVar[tuple[str, ...]] = ("a", "log", "spd")

    def _compute_shape(self) -> Shape:
        return ()

    def children(self) -> tuple[Node, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Named(Node):
    """A named intermediate, or the adjoint of one: equal in value to ``body``."""

    name: str
    body: Node
    symbol: sp.Basic = field(repr=False)
    _fields: ClassVar[tuple[str, ...]] = ("name", "body", "symbol")

    def _compute_shape(self) -> Shape:
        return self.body.shape

    def children(self) -> tuple[Node, ...]:
        return (self.body,)


# ---------------------------------------------------------------------------------------------
# Constructors


def leaf(name: str, dims: Shape, symbol: sp.Basic) -> Leaf:
    return _intern(Leaf(name, tuple(sp.sympify(d) for d in dims), symbol))


def ones(dims: Shape) -> Node:
    dims = tuple(sp.sympify(d) for d in dims)
    if not dims:
        return scalar(1)
    return _intern(Ones(dims))


def zero(dims: Shape) -> Zero:
    return _intern(Zero(tuple(sp.sympify(d) for d in dims)))


def identity(dim: sp.Expr) -> Identity:
    return _intern(Identity(sp.sympify(dim)))


def scalar(value: sp.Expr) -> Node:
    """A constant scalar (it may contain dimension symbols, such as ``1/n``)."""
    value = sp.sympify(value)
    if value == 0:
        return zero(())
    return _intern(Einsum((), (), (), value, ()))


def named(name: str, body: Node, symbol: sp.Basic) -> Named:
    return _intern(Named(name, body, symbol))


def _label_dims(operands: tuple[Node, ...], specs: tuple[Labels, ...]) -> dict[int, sp.Expr]:
    dims: dict[int, sp.Expr] = {}
    for op, spec in zip(operands, specs, strict=False):
        if len(spec) != op.rank:
            raise ShapeMismatchError(
                f"an operand of rank {op.rank} (shape {op.shape}) got {len(spec)} indices",
                op.shape, tuple(spec),
            )
        for label, dim in zip(spec, op.shape, strict=False):
            known = dims.setdefault(label, dim)
            if known != dim:
                raise ShapeMismatchError(
                    f"one index runs over two different dimensions: {known} and {dim}; the "
                    f"shapes of the operands do not agree",
                    (known,), (dim,),
                )
    return dims


def is_zero(node: Node) -> bool:
    return isinstance(node, Zero)


def is_scalar_constant(node: Node) -> bool:
    return isinstance(node, Einsum) and not node.operands


def einsum(operands, specs, out, coeff: sp.Expr = 1) -> Node:
    """Builds ``coeff * einsum(specs -> out)(*operands)``, simplified.

    Simplifications: zeros annihilate; nested einsums that are not ``Named`` are inlined;
    Kronecker deltas over a summed index are eliminated by renaming; ones whose indices occur
    elsewhere are dropped, and ones summed alone become a dimension factor; a lone operand
    under the identity permutation is returned as itself.
    """
    operands = list(operands)
    specs = [tuple(s) for s in specs]
    out = tuple(out)
    coeff = sp.sympify(coeff)
    dims = _label_dims(tuple(operands), tuple(specs))
    if len(set(out)) != len(out):
        raise ValueError(f"einsum output labels must be distinct, got {out}")
    for label in out:
        if label not in dims:
            raise ShapeMismatchError(f"output index {label} does not occur in any operand")
    shape = tuple(dims[label] for label in out)
    if coeff == 0 or any(is_zero(op) for op in operands):
        return zero(shape)

    fresh = itertools.count(max(dims, default=-1) + 1)
    changed = True
    while changed:
        changed = False
        # Inline nested einsums (the product of products is one product).
        for k, op in enumerate(operands):
            if isinstance(op, Einsum):
                inner_out = dict(zip(op.out, specs[k], strict=False))
                rename = {lab: inner_out.get(lab) for lab in op.label_dims()}
                for lab in rename:
                    if rename[lab] is None:
                        rename[lab] = next(fresh)
                new_specs = [tuple(rename[lab] for lab in s) for s in op.specs]
                # A repeated outer label over distinct inner output labels is a diagonal.
                operands = operands[:k] + list(op.operands) + operands[k + 1:]
                specs = specs[:k] + new_specs + specs[k + 1:]
                coeff = coeff * op.coeff
                changed = True
                break
        if changed:
            continue
        # Kronecker deltas: δ[a, b] with a summed renames a to b everywhere.
        for k, op in enumerate(operands):
            if not isinstance(op, Identity):
                continue
            a, b = specs[k]
            if a == b:  # the diagonal of δ is a vector of ones
                operands[k], specs[k] = ones((op.dim,)), (a,)
                changed = True
                break
            if a in out and b in out:
                continue
            gone, kept = (a, b) if a not in out else (b, a)
            del operands[k]
            del specs[k]
            specs = [tuple(kept if lab == gone else lab for lab in s) for s in specs]
            if not any(kept in s for s in specs):
                if kept in out:
                    operands.append(ones((op.dim,)))
                    specs.append((kept,))
                else:
                    coeff = coeff * op.dim
            changed = True
            break
        if changed:
            continue
        # Ones: drop the labels that occur elsewhere; a label summed only here is a factor.
        for k, op in enumerate(operands):
            if isinstance(op, Ones):
                spec = specs[k]
                others = [lab for j, s in enumerate(specs) if j != k for lab in s]
                keep = [i for i, lab in enumerate(spec) if lab not in others and lab in out]
                factor = sp.Integer(1)
                for i, lab in enumerate(spec):
                    if lab not in others and lab not in out and lab not in spec[:i]:
                        factor *= op.dims[i]
                if len(keep) == len(spec) and factor == 1:
                    continue
                coeff *= factor
                if keep and len(set(spec[i] for i in keep)) == len(keep):
                    operands[k] = ones(tuple(op.dims[i] for i in keep))
                    specs[k] = tuple(spec[i] for i in keep)
                else:
                    del operands[k]
                    del specs[k]
                changed = True
                break

    if (
        len(operands) == 1
        and coeff == 1
        and specs[0] == out
        and len(set(out)) == len(out)
    ):
        return operands[0]
    operands_t, specs_t, out_c = _canonical_labels(tuple(operands), tuple(specs), out)
    return _intern(Einsum(operands_t, specs_t, out_c, coeff, shape))


def _canonical_labels(operands, specs, out):
    """Renames labels to 0, 1, 2, ... in order of appearance, so equal products intern."""
    mapping: dict[int, int] = {}
    for lab in itertools.chain(out, *specs):
        if lab not in mapping:
            mapping[lab] = len(mapping)
    specs_c = tuple(tuple(mapping[lab] for lab in s) for s in specs)
    out_c = tuple(mapping[lab] for lab in out)
    return operands, specs_c, out_c


def scale(node: Node, factor: sp.Expr) -> Node:
    labels = tuple(range(node.rank))
    return einsum([node], [labels], labels, factor)


def hadamard(*nodes: Node) -> Node:
    shape = nodes[0].shape
    for n in nodes[1:]:
        if n.shape != shape:
            raise ShapeMismatchError(
                f"elementwise product of shapes {shape} and {n.shape}", shape, n.shape
            )
    labels = tuple(range(len(shape)))
    return einsum(nodes, [labels] * len(nodes), labels)


def broadcast(node: Node, labels: Labels, out: Labels, dims: dict[int, sp.Expr]) -> Node:
    """``node`` indexed by ``labels``, broadcast to the labels ``out`` (dims of new ones given)."""
    missing = tuple(lab for lab in out if lab not in labels)
    operands = [node]
    specs = [labels]
    if missing:
        operands.append(ones(tuple(dims[lab] for lab in missing)))
        specs.append(missing)
    return einsum(operands, specs, out)


def add(*terms: Node) -> Node:
    """Sum of same-shape tensors; flattens, drops zeros, and merges terms that differ only
    in their coefficient."""
    flat: list[Node] = []
    for t in terms:
        if isinstance(t, Add):
            flat.extend(t.terms)
        else:
            flat.append(t)
    if not flat:
        raise ValueError("add() needs at least one term")
    shape = flat[0].shape
    for t in flat[1:]:
        if t.shape != shape:
            raise ShapeMismatchError(
                f"cannot add tensors of shapes {shape} and {t.shape}", shape, t.shape
            )
    merged: dict[object, list] = {}
    order: list[object] = []
    for t in flat:
        if is_zero(t):
            continue
        if isinstance(t, Einsum):
            body, c = t, t.coeff
        else:
            labels = tuple(range(t.rank))
            body, c = Einsum((t,), (labels,), labels, sp.Integer(1), t.shape), sp.Integer(1)
        body_key = (tuple(id(o) for o in body.operands), body.specs, body.out)
        if body_key in merged:
            merged[body_key][1] += c
        else:
            merged[body_key] = [body, c]
            order.append(body_key)
    kept = []
    for key in order:
        body, c = merged[key]
        if c == 0:
            continue
        kept.append(einsum(body.operands, body.specs, body.out, c))
    if not kept:
        return zero(shape)
    if len(kept) == 1:
        return kept[0]
    return _intern(Add(tuple(kept)))


def map_(fn: sp.Lambda, *args: Node) -> Node:
    """Applies the scalar function ``fn`` entry by entry; constants and the identity fold."""
    shape = args[0].shape
    for a in args[1:]:
        if a.shape != shape:
            raise ShapeMismatchError(
                f"elementwise function of shapes {shape} and {a.shape}", shape, a.shape
            )
    fn = canonical_lambda(fn)
    variables = fn.variables
    body = fn.expr
    if not body.free_symbols & set(variables):
        return scale(ones(shape), body) if shape else scalar(body)
    if len(variables) == 1:
        (x,) = variables
        if body == x:
            return args[0]
        coeff, rest = body.as_coeff_Mul()
        if rest == x:
            return scale(args[0], coeff)
    used = [i for i, v in enumerate(variables) if v in body.free_symbols]
    if len(used) < len(variables):
        fn = canonical_lambda(sp.Lambda(tuple(variables[i] for i in used), body))
        args = tuple(args[i] for i in used)
    return _intern(Map(fn, tuple(args)))


_VARIABLES: list[sp.Dummy] = []


def canonical_lambda(fn: sp.Lambda) -> sp.Lambda:
    """``fn`` over the shared real variables x0, x1, ...: equal functions become equal
    objects (so their maps intern together), and |x|' = sign(x) holds (entries are real)."""
    while len(_VARIABLES) < len(fn.variables):
        _VARIABLES.append(sp.Dummy(f"x{len(_VARIABLES)}", real=True))
    canonical = tuple(_VARIABLES[: len(fn.variables)])
    if fn.variables == canonical:
        return fn
    body = fn.expr.xreplace(dict(zip(fn.variables, canonical, strict=True)))
    return sp.Lambda(canonical, body)


def logsumexp(arg: Node, axis: int) -> LogSumExp:
    """``log Σ exp`` of ``arg`` along ``axis`` (kept with size 1)."""
    return _intern(LogSumExp(arg, _lane_axis(arg, axis, "logsumexp")))


def softmax(arg: Node, axis: int) -> Softmax:
    """``exp(arg) / Σ exp(arg)`` along ``axis``."""
    return _intern(Softmax(arg, _lane_axis(arg, axis, "softmax")))


def _lane_axis(arg: Node, axis: int, what: str) -> int:
    """``axis`` of ``arg`` as a non-negative int (``-1`` is the last axis)."""
    if arg.rank == 0:
        raise ShapeMismatchError(f"{what} needs a tensor with an axis, got a scalar", ())
    if not -arg.rank <= int(axis) < arg.rank:
        raise ShapeMismatchError(
            f"{what} along axis {axis} of a tensor of rank {arg.rank} (shape {arg.shape}); "
            f"the axis must be in 0..{arg.rank - 1}", arg.shape)
    return int(axis) % arg.rank


def lane_labels(rank: int, axis: int) -> tuple[Labels, Labels]:
    """Einsum labels of a tensor of ``rank`` (``0 .. rank-1``) and of its reduction along
    ``axis`` kept as a size-1 axis (label ``rank`` there): the row statistic that every entry
    of the lane reads."""
    labels = tuple(range(rank))
    lane = labels[:axis] + (rank,) + labels[axis + 1:]
    return labels, lane


def solve(a: Node, b: Node, spd: bool = False) -> Node:
    """``A^{-1} B`` (the inverse itself is ``solve(A, identity)``); zero when ``B`` is.
    ``spd``: ``A`` is symmetric positive definite by construction (Cholesky, checked)."""
    _require_matrix(a, "solve")
    if a.shape[0] != a.shape[1]:
        raise ShapeMismatchError(
            f"the matrix of a linear solve or an inverse must be square, got {a.shape}", a.shape
        )
    if b.rank == 0 or b.shape[0] != a.shape[0]:
        raise ShapeMismatchError(
            f"a linear solve A^-1 B needs B with {a.shape[0]} rows (A is {a.shape}), got "
            f"{b.shape}", a.shape, b.shape,
        )
    if is_zero(b):
        return b
    return _intern(Solve(a, b, bool(spd)))


def det(a: Node, log: bool = False, spd: bool = False) -> Det:
    """``det a``, or ``log |det a|`` when ``log``; ``spd`` declares ``a`` symmetric positive
    definite (its kernel then factors it by Cholesky)."""
    _require_matrix(a, "a determinant")
    if a.shape[0] != a.shape[1]:
        raise ShapeMismatchError(
            f"a determinant needs a square matrix, got shape {a.shape}", a.shape)
    return _intern(Det(a, bool(log), bool(spd)))


def _require_matrix(arg: Node, what: str) -> None:
    if arg.rank != 2:
        raise ShapeMismatchError(f"{what} needs a matrix, got shape {arg.shape}", arg.shape)


def topological_order(roots: list[Node], stop=()) -> list[Node]:
    """Every node reachable from ``roots``, children before parents; the nodes in ``stop``
    are listed but not descended into."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if stop and node in stop:
            continue
        for child in reversed(node.children()):
            if id(child) not in seen:
                stack.append((child, False))
    return order


def rebuilt(node: Node, children: list[Node]) -> Node:
    """``node`` over new children (the same value, for IR-to-IR rewrites), through the smart
    constructors; the node itself when no child changed."""
    if all(new is old for new, old in zip(children, node.children(), strict=True)):
        return node
    return REBUILD(node, children)


REBUILD: Rules[Callable[[Node, list[Node]], Node]] = Rules("rebuilding over new children")
"""node kind -> (node, its new children) -> the node over them, through a smart constructor."""


@REBUILD.register(Leaf, Ones, Zero, Identity)
def _rebuild_leaf(node: Node, children: list[Node]) -> Node:
    return node  # leaves have no children


@REBUILD.register(Einsum)
def _rebuild_einsum(node: Einsum, children: list[Node]) -> Node:
    return einsum(children, node.specs, node.out, node.coeff)


@REBUILD.register(Map)
def _rebuild_map(node: Map, children: list[Node]) -> Node:
    return map_(node.fn, *children)


@REBUILD.register(Add)
def _rebuild_add(node: Add, children: list[Node]) -> Node:
    return add(*children)


@REBUILD.register(LogSumExp)
def _rebuild_logsumexp(node: LogSumExp, children: list[Node]) -> Node:
    return logsumexp(children[0], node.axis)


@REBUILD.register(Softmax)
def _rebuild_softmax(node: Softmax, children: list[Node]) -> Node:
    return softmax(children[0], node.axis)


@REBUILD.register(Solve)
def _rebuild_solve(node: Solve, children: list[Node]) -> Node:
    return solve(children[0], children[1], node.spd)


@REBUILD.register(Det)
def _rebuild_det(node: Det, children: list[Node]) -> Node:
    return det(children[0], node.log, node.spd)


@REBUILD.register(Named)
def _rebuild_named(node: Named, children: list[Node]) -> Node:
    return named(node.name, children[0], node.symbol)


def count_nodes(roots: list[Node]) -> int:
    return len(topological_order(roots))


# ---------------------------------------------------------------------------------------------
# Matrix functions computed by a factorisation (norms, singular values, eigenvalues)


MATRIX_FUNCTION_KINDS: dict[str, str] = {
    "fro": "the Frobenius norm ||A||_F (a scalar)",
    "nuclear": "the nuclear norm, the sum of the singular values (a scalar)",
    "norm2": "the 2-norm, the largest singular value (a scalar)",
    "svdvals": "the singular values, largest first (a column; rows >= columns)",
    "eigvalsh": "the eigenvalues of the symmetric part (A + A^T)/2, ascending (a column)",
    # Factors that derivatives read (each checks its assumption where it is computed):
    "polar": "U V^T of the thin SVD: the gradient of the nuclear norm (all sigma > 0)",
    "top": "u_1 v_1^T: the gradient of the 2-norm (sigma_1 > sigma_2)",
    "svd_u": "U of the thin SVD (distinct, nonzero singular values)",
    "svd_v": "V of the thin SVD (distinct, nonzero singular values)",
    "eigvecsh": "the eigenvectors of (A + A^T)/2, as columns (distinct eigenvalues)",
    "eigh_gaps": "F[i, j] = 1/(lambda_j - lambda_i), 0 on the diagonal: the derivative of the "
                 "eigenvectors (distinct eigenvalues)",
    "cholesky": "the Cholesky factor L of (A + A^T)/2 (lower triangular, positive definite)",
    "tril_half": "the lower triangle of A with half its diagonal (over A's first two axes, "
                 "any further axes kept): the derivative of the Cholesky factor",
}
"""Every kind of ``MatrixFunction`` and what it is. The first five, ``eigvecsh`` and
``cholesky`` are values a definition writes; the others are the factors their derivatives are
written in."""


@dataclass(frozen=True, eq=False)
class MatrixFunction(Node):
    """A function of a matrix ``a`` that a factorisation (SVD, symmetric eigendecomposition)
    or a norm computes: ``kind`` is one of ``MATRIX_FUNCTION_KINDS``. One node kind serves
    them all because every interpreter treats them alike (an opaque step of their own in
    kernels, a NumPy call in evaluation); their rules differ in the derivative only."""

    a: Node
    kind: str
    _fields: ClassVar[tuple[str, ...]] = ("a", "kind")

    def _compute_shape(self) -> Shape:
        if self.kind == "tril_half":
            return self.a.shape
        rows, cols = self.a.shape
        one = sp.Integer(1)
        return {"fro": (), "nuclear": (), "norm2": (), "svdvals": (cols, one),
                "eigvalsh": (rows, one), "polar": (rows, cols), "top": (rows, cols),
                "svd_u": (rows, cols), "svd_v": (cols, cols), "eigvecsh": (rows, rows),
                "eigh_gaps": (rows, rows), "cholesky": (rows, rows)}[self.kind]

    def children(self) -> tuple[Node, ...]:
        return (self.a,)


def matrix_function(a: Node, kind: str) -> MatrixFunction:
    """The matrix function ``kind`` (one of ``MATRIX_FUNCTION_KINDS``) of the matrix ``a``."""
    if kind not in MATRIX_FUNCTION_KINDS:
        raise ValueError(f"unknown matrix function {kind!r}; one of {list(MATRIX_FUNCTION_KINDS)}")
    if kind != "tril_half":  # which alone reads tangents with seed axes
        _require_matrix(a, MATRIX_FUNCTION_KINDS[kind])
    if (kind in ("eigvalsh", "eigvecsh", "eigh_gaps", "cholesky", "tril_half")
            and (a.rank < 2 or a.shape[0] != a.shape[1])):
        raise ShapeMismatchError(
            f"{MATRIX_FUNCTION_KINDS[kind]} needs a square (symmetric) matrix, got shape "
            f"{a.shape}", a.shape)
    return _intern(MatrixFunction(a, kind))


@REBUILD.register(MatrixFunction)
def _rebuild_matrix_function(node: MatrixFunction, children: list[Node]) -> Node:
    return matrix_function(children[0], node.kind)



# ---------------------------------------------------------------------------------------------
# Recurrences


@dataclass(frozen=True, eq=False)
class Scan(Node):
    """A recurrence over ``t = 1..length``, ``length`` a symbol: never unrolled.

    Design. The step is its own small IR graph over placeholder leaves, held in the node and
    not among its children:

    * ``carry`` (placeholders for the state ``c_{t-1}``: one for an RNN or GRU, two for an
      LSTM's ``(h, c)``, none for a plain map over ``t``) starts at ``init``; at each step
      ``c_t = step`` (graphs over the placeholders, one per carry);
    * ``slots[k]`` (placeholders) read ``seqs[k]`` at ``t`` (``lags[k] == 0``) or at
      ``t - 1`` (``lags[k] == 1``, reading ``bounds[k]`` at the first step): every sequence
      has the time axis first, of size ``length``;
    * ``closure``: the nodes of the outer graph that the step reads (parameters, and
      whatever does not depend on ``t``, hoisted out of the loop); they are children, so
      that derivatives reach them;
    * ``emit``: what step ``t`` outputs, a graph over the same placeholders (the new state
      for ``h_t = f(h_{t-1}, x_t; θ)``: then ``emit is step[0]``);
    * ``mode``: ``"stack"`` (the value is the outputs stacked along a first axis of size
      ``length``), ``"sum"`` (their sum over ``t``) or ``"final"`` (the carry that ``emit``
      names, after the last step); ``reverse`` runs ``t`` from ``length`` down to 1.

    Reverse mode (backprop through time), for ``H = scan(h_t = f(h_{t-1}, x_t; θ))`` with
    upstream adjoint ``Ḡ``: a reverse scan whose carry is the adjoint sent down to
    ``h_{t-1}``: ``δ_t = Ḡ_t + c_t``, ``c_{t-1} = J_h f(h_{t-1}, x_t)^T δ_t`` (it reads the
    stored states, ``H`` lagged by one with ``h_0`` first, and ``h_t`` for derivatives written
    on the output); ``∂h_0`` is its final carry; ``∂x_t = J_x f^T δ_t`` is a map over ``t``
    (stacked) and ``∂θ = Σ_t J_θ f^T δ_t`` one summed over ``t``. Forward mode (Hessians,
    HVPs) is a scan carrying the state and its tangent. The body's derivatives are ordinary
    IR (``symdl.derive.autodiff`` on the step graph), so any step the IR differentiates can be
    scanned. Evaluation and kernels loop over ``t`` around the body, whose code is generated
    once: compile time does not depend on ``length``; the forward states are stored
    (``length`` x the state's size) for the reverse loop.
    """

    init: tuple[Node, ...]
    carry: tuple[Leaf, ...]
    seqs: tuple[Node, ...]
    slots: tuple[Leaf, ...]
    lags: tuple[int, ...]
    bounds: tuple[Node | None, ...]
    closure: tuple[Node, ...]
    step: tuple[Node, ...]
    emit: Node
    length: sp.Expr
    mode: str
    reverse: bool
    _fields: ClassVar[tuple[str, ...]] = (
        "init", "carry", "seqs", "slots", "lags", "bounds", "closure", "step", "emit",
        "length", "mode", "reverse")

    def _compute_shape(self) -> Shape:
        if self.mode == "stack":
            return (self.length,) + tuple(self.emit.shape)
        return tuple(self.emit.shape)

    def children(self) -> tuple[Node, ...]:
        bounds = tuple(b for b in self.bounds if b is not None)
        return self.init + self.seqs + bounds + self.closure

    def placeholders(self) -> tuple[Leaf, ...]:
        return self.carry + self.slots

    def body_roots(self) -> list[Node]:
        return list(self.step) + [self.emit]


def closure_of(roots: list[Node], placeholders: tuple[Node, ...]) -> tuple[Node, ...]:
    """The largest subgraphs under ``roots`` that do not depend on ``placeholders``, in a
    fixed order: what a scan's step reads from outside (hoisted out of the loop)."""
    depends = {id(p) for p in placeholders}
    order = topological_order(list(roots))
    for node in order:
        if any(id(c) in depends for c in node.children()):
            depends.add(id(node))
    found: list[Node] = []
    seen: set[int] = set()
    for node in order:
        if id(node) not in depends:
            continue
        for child in node.children():
            if id(child) not in depends and id(child) not in seen:
                seen.add(id(child))
                found.append(child)
    for root in roots:  # a step that reads no placeholder at all
        if id(root) not in depends and id(root) not in seen:
            seen.add(id(root))
            found.append(root)
    return tuple(found)


def substitute(roots: list[Node], mapping: dict[int, Node]) -> list[Node]:
    """``roots`` with the nodes whose ids are in ``mapping`` replaced (rebuilt above them)."""
    done: dict[int, Node] = {}
    stop = [n for n in topological_order(list(roots)) if id(n) in mapping]
    for node in topological_order(list(roots), stop=stop):
        if id(node) in mapping:
            done[id(node)] = mapping[id(node)]
        else:
            done[id(node)] = rebuilt(node, [done[id(c)] for c in node.children()])
    return [done[id(r)] for r in roots]


def scan(
    *,
    carry: tuple[Leaf, ...] = (),
    init: tuple[Node, ...] = (),
    step: tuple[Node, ...] = (),
    slots: tuple[Leaf, ...],
    seqs: tuple[Node, ...],
    emit: Node,
    length: sp.Expr,
    lags: tuple[int, ...] | None = None,
    bounds: tuple[Node | None, ...] | None = None,
    mode: str = "stack",
    reverse: bool = False,
) -> Node:
    """Builds a ``Scan`` (see its docstring), checking the shapes of its parts."""
    length = sp.sympify(length)
    carry, init, step = tuple(carry), tuple(init), tuple(step)
    lags = tuple(lags) if lags is not None else (0,) * len(slots)
    bounds = tuple(bounds) if bounds is not None else (None,) * len(slots)
    if mode not in ("stack", "sum", "final"):
        raise ValueError(f"scan mode {mode!r}")
    if not len(carry) == len(init) == len(step):
        raise ValueError("a scan has one initial value and one step per carry")
    for c, i, s in zip(carry, init, step, strict=True):
        if i.shape != c.shape or s.shape != c.shape:
            raise ShapeMismatchError(
                f"a recurrence's initial state {i.shape}, its carry {c.shape} and its "
                f"step {s.shape} must have one shape", i.shape, s.shape)
    for slot, seq, lag, bound in zip(slots, seqs, lags, bounds, strict=True):
        if seq.rank == 0 or seq.shape[0] != length or tuple(seq.shape[1:]) != slot.shape:
            raise ShapeMismatchError(
                f"a sequence read at each step t = 1..{length} as {slot.shape} must have "
                f"shape {(length,) + tuple(slot.shape)}, got {seq.shape}", seq.shape)
        if lag not in (0, 1) or (lag == 1) != (bound is not None):
            raise ValueError("a lag-1 read needs its value at the first step, lag 0 none")
        if bound is not None and bound.shape != slot.shape:
            raise ShapeMismatchError(
                f"the first value {bound.shape} of a lagged read must have the shape "
                f"{slot.shape} of its slot", bound.shape, slot.shape)
    if mode == "final" and emit not in carry:
        raise ValueError("a final-carry scan's output names one of its carries")
    roots = list(step) + [emit]
    closure = closure_of(roots, carry + tuple(slots))
    return _intern(Scan(init, carry, tuple(seqs), tuple(slots), lags, bounds, closure, step,
                        emit, length, mode, bool(reverse)))


@REBUILD.register(Scan)
def _rebuild_scan(node: Scan, children: list[Node]) -> Node:
    k = len(node.init)
    init = tuple(children[:k])
    seqs = tuple(children[k:k + len(node.seqs)])
    k += len(node.seqs)
    bounds = []
    for b in node.bounds:
        if b is None:
            bounds.append(None)
        else:
            bounds.append(children[k])
            k += 1
    closure = children[k:]
    mapping = {id(old): new for old, new in zip(node.closure, closure, strict=True)
               if old is not new}
    roots = node.body_roots()
    if mapping:
        roots = substitute(roots, mapping)
    return scan(carry=node.carry, init=init, step=tuple(roots[:-1]), slots=node.slots,
                seqs=seqs, emit=roots[-1], length=node.length, lags=node.lags,
                bounds=tuple(bounds), mode=node.mode, reverse=node.reverse)
