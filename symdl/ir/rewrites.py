"""Stability rewrites on the IR: every spelling of a loss computes in a form that cannot
overflow.

A user writes the logistic loss as ``softplus(z)``, as ``log(1 + exp(z))`` through
``applyfunc``, in index notation, or as ``-y log σ(z) - (1 - y) log(1 - σ(z))``; the frontend
turns each into a different graph of ``Map``, ``Add`` and ``Einsum`` nodes, and the unstable
part (``exp(1000)``, ``0 · log 0``) may be spread over several of them. This stage works on
the graph, not on the SymPy the user wrote, and it runs twice: after translation and after
every differentiation (derivatives re-create ``exp(z)/(1 + exp(z))``).

How it sees a spelling: an *elementwise cluster* is a node that is computed entry by entry
(``Map``, ``Add``, an ``Einsum`` without a summed label) together with the elementwise nodes
below it. At the top of each cluster, the cluster is written as one scalar SymPy expression
over its *atoms* (the non-elementwise nodes it reads: leaves, sums, softmaxes, named steps),
the rules below rewrite that expression, and when they remove an overflow-prone operation
(an ``exp``, a ``log`` or a division by a non-constant) the cluster is rebuilt from the
stable expression. Otherwise the graph is left exactly as it was.

The rules are data: ``LOG_FORMS`` says which atoms have a stable logarithm (softmax ->
log-softmax, a row sum of ``exp`` -> log-sum-exp), ``symdl.primitives.registry.STABILITY_REWRITES``
holds the scalar rewrites (``log(1 + exp(x))`` -> ``softplus(x)``), and one more rule writes
``exp(z_ij) / Σ_k exp(z_ik)`` as a softmax. A contraction's factors that multiply entry by
entry (``Σ P ⊙ log P``) are one cluster too.

Where numbers are computed (kernels, ``symdl.evaluate``) a second tier, ``exact``, also
removes cancellation (``ACCURACY_REWRITES``: ``softplus(z) - y z`` -> ``(1 - y) softplus(z) +
y softplus(-z)``, ``σ(z) - y``, ``σ(1 - σ)``) and lets a zero label ignore a masked ``-inf``
logit. Its forms are longer to read, so printed derivations keep the textbook ones.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from symdl import ir
from symdl.ir.rules import Rules
from symdl.primitives.functions import sigmoid, softplus
from symdl.primitives.registry import ACCURACY_REWRITES
from symdl.primitives.registry import stabilize as stabilize_scalar

Labels = tuple[int, ...]

MAX_CLUSTER_DEPTH = 64
"""Elementwise nodes deeper than this below a cluster's top are read as atoms: the scalar
expression (and SymPy's recursion over it) stays bounded on long chains."""


# ---------------------------------------------------------------------------------------------
# What an atom is


def _unnamed(node: ir.Node) -> ir.Node:
    """The value under any ``Named`` wrappers (a named step equals its body)."""
    while isinstance(node, ir.Named):
        node = node.body
    return node


def is_elementwise(node: ir.Node) -> bool:
    """Whether ``node`` is computed entry by entry from same-position entries of its
    operands (possibly broadcast): a ``Map``, an ``Add``, or an ``Einsum`` that sums nothing."""
    return ELEMENTWISE(node)


ELEMENTWISE: Rules[Callable[[ir.Node], bool]] = Rules("the elementwise test of stable rewriting")


@ELEMENTWISE.register(ir.Map, ir.Add)
def _always_elementwise(node: ir.Node) -> bool:
    return True


@ELEMENTWISE.register(ir.Einsum)
def _einsum_elementwise(node: ir.Einsum) -> bool:
    out = set(node.out)
    return all(lab in out for spec in node.specs for lab in spec)


@ELEMENTWISE.register(ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.LogSumExp, ir.Softmax,
                      ir.Solve, ir.Det, ir.Named)
def _never_elementwise(node: ir.Node) -> bool:
    return False


@dataclass(frozen=True)
class SumOfExp:
    """A node ``coeff Σ_b exp(g(args))[a, b]`` (broadcast along the other output labels):
    ``arg`` is the matrix ``g(args)``, summed along ``axis``."""

    arg: ir.Node
    axis: int
    coeff: sp.Expr
    kept: int | None
    """The output label that carries the rows (``axis=1``) or columns kept; None for the sum
    over a vector, whose ``arg`` is then the vector as a ``1 x c`` matrix."""
    vector: ir.Node | None = None
    """The exponent vector ``g(args)`` of a sum over a vector."""


def sum_of_exp(node: ir.Node) -> SumOfExp | None:
    """Recognises a sum of exponentials along one axis of a matrix (a hand-written
    ``log Σ exp`` or softmax denominator), or None."""
    node = _unnamed(node)
    if not isinstance(node, ir.Einsum):
        return None
    inner = [(op, spec) for op, spec in zip(node.operands, node.specs, strict=True)
             if not isinstance(op, ir.Ones)]
    if len(inner) != 1:
        return None
    ones_labels = {lab for op, spec in zip(node.operands, node.specs, strict=True)
                   if isinstance(op, ir.Ones) for lab in spec}
    e, spec = inner[0]
    if not (isinstance(e, ir.Map) and isinstance(e.fn.expr, sp.exp)):
        return None
    body = e.fn.expr
    if e.rank == 1 and spec[0] not in node.out and spec[0] not in ones_labels:
        vector = ir.map_(sp.Lambda(e.fn.variables, body.args[0]), *e.args)
        row = ir.einsum([vector, ir.ones((1,))], [(1,), (0,)], (0, 1))
        return SumOfExp(row, 1, node.coeff, None, vector)
    if not (e.rank == 2 and len(set(spec)) == 2):
        return None
    summed = [k for k, lab in enumerate(spec) if lab not in node.out]
    if len(summed) != 1 or spec[summed[0]] in ones_labels:
        return None
    axis = summed[0]
    kept = spec[1 - axis]
    if kept not in node.out or e.shape[axis] == 1:
        return None
    exponent = ir.map_(sp.Lambda(e.fn.variables, body.args[0]), *e.args)
    return SumOfExp(exponent, axis, node.coeff, kept)


def log_softmax(arg: ir.Node, axis: int) -> ir.Node:
    """``arg - logsumexp(arg)`` broadcast along ``axis``: the log of a softmax, finite
    wherever ``arg`` is."""
    lse = ir.logsumexp(arg, axis)
    labels, lane = ir.lane_labels(arg.rank, axis)
    spread = ir.einsum([lse, ir.ones((arg.shape[axis],))], [lane, (axis,)], labels, -1)
    return ir.add(arg, spread)


def _log_of_sum_of_exp(node: ir.Node) -> tuple[ir.Node, sp.Expr] | None:
    """``log(node) = lse_view + log(coeff)`` for a sum of exponentials."""
    found = sum_of_exp(node)
    if found is None:
        return None
    node = _unnamed(node)
    lse = ir.logsumexp(found.arg, found.axis)
    fresh = max(node.label_dims(), default=-1) + 1
    spec = [fresh, fresh + 1]
    if found.kept is not None:
        spec[1 - found.axis] = found.kept  # the summed axis is the size-1 axis of lse
    operands = [lse] + [op for op in node.operands if isinstance(op, ir.Ones)]
    specs = [tuple(spec)] + [s for op, s in zip(node.operands, node.specs, strict=True)
                             if isinstance(op, ir.Ones)]
    return ir.einsum(operands, specs, node.out), sp.log(found.coeff)


def _log_of_softmax(node: ir.Node) -> tuple[ir.Node, sp.Expr] | None:
    node = _unnamed(node)
    if not isinstance(node, ir.Softmax):
        return None
    return log_softmax(node.arg, node.axis), sp.Integer(0)


LOG_FORMS: tuple[Callable[[ir.Node], tuple[ir.Node, sp.Expr] | None], ...] = (
    _log_of_softmax,
    _log_of_sum_of_exp,
)
"""Atoms with a stable logarithm: node -> (node of log(node) minus a constant, that constant),
or None. An atom that has one is positive."""


# ---------------------------------------------------------------------------------------------
# A cluster as a scalar expression


@dataclass(frozen=True)
class _Atom:
    symbol: sp.Dummy
    node: ir.Node
    """The atom read at the cluster's entry (a broadcast or transposed view of ``base``)."""
    base: ir.Node
    spec: Labels


class _Cluster:
    """The scalar view of one elementwise cluster, over the atoms it reads."""

    def __init__(self, labels: Labels, dims: dict[int, sp.Expr]):
        self.out: Labels = labels
        self.dims = {lab: dims[lab] for lab in labels}
        self.atoms: dict[int, _Atom] = {}
        self.by_symbol: dict[sp.Symbol, _Atom] = {}
        self._memo: dict[tuple[int, Labels], sp.Expr] = {}

    def view(self, node: ir.Node, spec: Labels) -> ir.Node:
        """``node`` whose axes carry the cluster labels ``spec``, broadcast to the cluster."""
        if spec == self.out:
            return node
        return ir.broadcast(node, spec, self.out, self.dims)

    def atom(self, node: ir.Node, spec: Labels) -> sp.Symbol:
        viewed = self.view(node, spec)
        found = self.atoms.get(id(viewed))
        if found is None:
            positive = any(form(node) is not None for form in LOG_FORMS)
            symbol = sp.Dummy(f"a{len(self.atoms)}", positive=True) if positive else \
                sp.Dummy(f"a{len(self.atoms)}", real=True)
            found = _Atom(symbol, viewed, node, spec)
            self.atoms[id(viewed)] = found
            self.by_symbol[symbol] = found
        return found.symbol

    def expr(self, node: ir.Node, spec: Labels | None = None, depth: int = 0) -> sp.Expr:
        """The entry of ``node`` (axes labelled ``spec``) as a scalar over atoms."""
        spec = self.out if spec is None else spec
        key = (id(node), spec)
        if key in self._memo:
            return self._memo[key]
        value: sp.Expr = CLUSTER_ENTRY(node, self, spec, depth)
        self._memo[key] = value
        return value

    def contraction(self, node: ir.Einsum, spec: Labels, depth: int) -> sp.Expr:
        """A contraction's factors that only carry output labels multiply entry by entry:
        ``y ⊙ (X w)`` (one einsum of y, X, w) reads as ``y`` times the atom ``X w``."""
        out = set(node.out)
        entrywise = [k for k, s in enumerate(node.specs) if set(s) <= out]
        rest = [k for k in range(len(node.operands)) if k not in entrywise]
        if not entrywise or not rest:
            return self.atom(node, spec)
        position = dict(zip(node.out, spec, strict=True))
        rest_out = tuple(lab for lab in node.out if any(lab in node.specs[k] for k in rest))
        inner = ir.einsum([node.operands[k] for k in rest], [node.specs[k] for k in rest],
                          rest_out)
        factors = [node.coeff, self.atom(inner, tuple(position[lab] for lab in rest_out))]
        for k in entrywise:
            op_spec = tuple(position[lab] for lab in node.specs[k])
            factors.append(self.expr(node.operands[k], op_spec, depth + 1))
        return sp.Mul(*factors)

    def build(self, e: sp.Expr) -> ir.Node:
        """The IR of a scalar expression over this cluster's atoms (products become Hadamard
        products, sums ``Add``, anything else one ``Map``)."""
        shape = tuple(self.dims[lab] for lab in self.out)
        mine = e.free_symbols & set(self.by_symbol)
        if not mine:
            return ir.scale(ir.ones(shape), e) if shape else ir.scalar(e)
        if e in self.by_symbol:
            return self.by_symbol[e].node
        if isinstance(e, sp.Add):
            return ir.add(*[self.build(t) for t in e.args])
        if isinstance(e, sp.Mul):
            constant = sp.Mul(*[f for f in e.args if not f.free_symbols & mine])
            nodes = [self.build(f) for f in e.args if f.free_symbols & mine]
            return ir.einsum(nodes, [self.out] * len(nodes), self.out, constant)
        symbols = sorted(mine, key=lambda s: s.name)
        nodes = [self.by_symbol[s].node for s in symbols]
        return ir.map_(sp.Lambda(tuple(symbols), e), *nodes)


CLUSTER_ENTRY: Rules[Callable[[ir.Node, _Cluster, Labels, int], sp.Expr]] = Rules(
    "the entries of an elementwise cluster (stable rewriting)")
"""node kind -> (node, cluster, the labels of its axes, depth) -> its entry as a scalar over
the cluster's atoms. Past ``MAX_CLUSTER_DEPTH`` every node is an atom."""


@CLUSTER_ENTRY.register(ir.Ones)
def _one(node: ir.Ones, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    return sp.Integer(1)


@CLUSTER_ENTRY.register(ir.Zero)
def _zero(node: ir.Zero, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    return sp.Integer(0)


@CLUSTER_ENTRY.register(ir.Leaf, ir.Identity, ir.LogSumExp, ir.Softmax, ir.Solve, ir.Det,
                        ir.Named)
def _opaque(node: ir.Node, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    return cluster.atom(node, spec)


@CLUSTER_ENTRY.register(ir.Map)
def _map_entry(node: ir.Map, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    if depth > MAX_CLUSTER_DEPTH:
        return cluster.atom(node, spec)
    args = [cluster.expr(a, spec, depth + 1) for a in node.args]
    return node.fn.expr.xreplace(dict(zip(node.fn.variables, args, strict=True)))


@CLUSTER_ENTRY.register(ir.Add)
def _add_entry(node: ir.Add, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    if depth > MAX_CLUSTER_DEPTH:
        return cluster.atom(node, spec)
    return sp.Add(*[cluster.expr(t, spec, depth + 1) for t in node.terms])


@CLUSTER_ENTRY.register(ir.Einsum)
def _einsum_entry(node: ir.Einsum, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    if depth > MAX_CLUSTER_DEPTH:
        return cluster.atom(node, spec)
    if not is_elementwise(node):
        return cluster.contraction(node, spec, depth)
    position = dict(zip(node.out, spec, strict=True))
    factors = [node.coeff]
    for op, op_spec in zip(node.operands, node.specs, strict=True):
        factors.append(cluster.expr(op, tuple(position[lab] for lab in op_spec), depth + 1))
    return sp.Mul(*factors)


# ---------------------------------------------------------------------------------------------
# The rules on a cluster's expression


def instability(e: sp.Expr, atoms: set[sp.Symbol]) -> int:
    """How many overflow-prone operations ``e`` applies to its atoms: ``exp``, ``log`` and
    divisions by a non-constant. The stable primitives (sigmoid, softplus, softmax,
    log-sum-exp) do not count."""
    count = 0
    for node in sp.preorder_traversal(e):
        if not node.free_symbols & atoms:
            continue
        if isinstance(node, (sp.exp, sp.log)):
            count += 1
        elif isinstance(node, sp.Pow) and node.exp.is_negative:
            count += 1
    return count


def _softmax_candidates(cluster: _Cluster, e: sp.Expr) -> dict[sp.Symbol, sp.Expr]:
    """``Σ_k exp(z_ik)`` read next to ``exp(z_ij)`` is ``exp(z_ij) / softmax(z)_ij``: the
    substitution that turns a hand-written softmax into the primitive."""
    subs = {}
    for symbol, atom in list(cluster.by_symbol.items()):
        if symbol not in e.free_symbols:
            continue
        found = sum_of_exp(atom.base)
        if found is None:
            continue
        if found.kept is None:  # a vector: exp(z_j) / Σ_k exp(z_k)
            if len(cluster.out) == 1:
                (lane,) = cluster.out
                softmax = ir.einsum([ir.softmax(found.arg, 1)], [(1, 0)], (0,))
                p = cluster.atom(softmax, (lane,))
                subs[symbol] = found.coeff * sp.exp(cluster.expr(found.vector, (lane,))) / p
            continue
        base = _unnamed(atom.base)
        kept = atom.spec[base.out.index(found.kept)]
        if kept not in cluster.out or len(cluster.out) != 2:
            continue
        (lane,) = [lab for lab in cluster.out if lab != kept]
        spec = [lane, lane]
        spec[1 - found.axis] = kept
        exponent = cluster.expr(found.arg, tuple(spec))
        p = cluster.atom(ir.softmax(found.arg, found.axis), tuple(spec))
        subs[symbol] = found.coeff * sp.exp(exponent) / p
    return subs


def _log_forms(cluster: _Cluster, e: sp.Expr) -> sp.Expr:
    """``log(atom)`` -> its stable form (``LOG_FORMS``) wherever an atom has one."""

    def stable_log(arg: sp.Expr) -> sp.Expr:
        atom = cluster.by_symbol.get(arg)
        if atom is not None:
            for form in LOG_FORMS:
                found = form(atom.base)
                if found is not None:
                    node, constant = found
                    return cluster.atom(node, atom.spec) + constant
        return sp.log(arg)

    return e.replace(lambda x: isinstance(x, sp.log), lambda x: stable_log(x.args[0]))


def _peek_named(cluster: _Cluster, e: sp.Expr) -> sp.Expr:
    """Named elementwise steps inside a ``log`` written out (``log(P)`` with ``P = σ(Z)`` is
    ``-softplus(-Z)``): a step's value is its body."""
    subs = {}
    for symbol, atom in list(cluster.by_symbol.items()):
        body = _unnamed(atom.base)
        if symbol in e.free_symbols and body is not atom.base and is_elementwise(body):
            subs[symbol] = cluster.expr(body, atom.spec, depth=1)
    if not subs:
        return e
    return e.replace(lambda x: isinstance(x, sp.log), lambda x: sp.log(x.args[0].xreplace(subs)))


def _logs_expanded(e: sp.Expr) -> sp.Expr:
    """``log(a b / c)`` -> ``log a + log b - log c`` for positive factors (each may then have
    a stable form)."""
    return e.replace(lambda x: isinstance(x, sp.log), lambda x: sp.expand_log(x, deep=False))


CLUSTER_RULES: tuple[Callable[[_Cluster, sp.Expr], sp.Expr], ...] = (
    _peek_named,
    lambda cluster, e: _logs_expanded(e),
    _log_forms,
    lambda cluster, e: stabilize_scalar(e),
)
"""Applied in order to a cluster's expression (after the softmax substitution, when that
applies): each returns an equal expression."""


def _stable_expression(cluster: _Cluster, e: sp.Expr) -> sp.Expr | None:
    atoms = set(cluster.by_symbol)
    before = instability(e, atoms)
    if before == 0:
        return None
    best, best_score = None, before
    starts = [e]
    softmaxes = _softmax_candidates(cluster, e)
    if softmaxes:
        starts.append(e.xreplace(softmaxes))
    for candidate in starts:
        for rule in CLUSTER_RULES:
            candidate = rule(cluster, candidate)
        score = instability(candidate, set(cluster.by_symbol))
        if score < best_score:
            best, best_score = candidate, score
    return best


# ---------------------------------------------------------------------------------------------
# The stage


def _stable_elementwise(node: ir.Node) -> ir.Node | None:
    """The stable form of the elementwise cluster topped by ``node``, or None."""
    labels = tuple(range(node.rank))
    cluster = _Cluster(labels, dict(zip(labels, node.shape, strict=True)))
    stable = _stable_expression(cluster, cluster.expr(node))
    return None if stable is None else cluster.build(stable)


def _product_groups(node: ir.Einsum) -> list[list[int]]:
    """Operands of a contraction that multiply entry by entry before the sum (Σ P ⊙ log P
    is one einsum whose factors are P and log P): for each largest label set, the
    operands whose labels it contains."""
    sets = [frozenset(spec) for spec in node.specs]
    groups: list[list[int]] = []
    taken: set[int] = set()
    for k, labels in enumerate(sets):
        if k in taken or len(labels) != len(node.specs[k]) or any(labels < o for o in sets):
            continue
        group = [j for j, other in enumerate(sets) if other <= labels and j not in taken]
        taken.update(group)
        if len(group) > 1:
            groups.append([k] + [j for j in group if j != k])
    return groups


def _stable_contraction(node: ir.Einsum) -> ir.Node | None:
    """A contraction whose factors are stable only together, or None."""
    dims = node.label_dims()
    operands, specs = list(node.operands), list(node.specs)
    changed = False
    for group in _product_groups(node):
        labels = node.specs[group[0]]
        cluster = _Cluster(labels, dims)
        product = sp.Mul(*[cluster.expr(node.operands[k], node.specs[k]) for k in group])
        stable = _stable_expression(cluster, product)
        if stable is None:
            continue
        for k in group:
            operands[k] = None
        operands.append(cluster.build(stable))
        specs.append(labels)
        changed = True
    if not changed:
        return None
    kept = [(op, spec) for op, spec in zip(operands, specs, strict=True) if op is not None]
    return ir.einsum([op for op, _ in kept], [spec for _, spec in kept], node.out, node.coeff)


def _exact_elementwise(node: ir.Node) -> ir.Node | None:
    """The cluster topped by ``node`` with ``ACCURACY_REWRITES`` applied, or None."""
    labels = tuple(range(node.rank))
    cluster = _Cluster(labels, dict(zip(labels, node.shape, strict=True)))
    e = cluster.expr(node)
    if not e.has(sigmoid, softplus):
        return None
    exact = stabilize_scalar(e, ACCURACY_REWRITES)
    return None if exact == e else cluster.build(exact)


_WEIGHT, _LOGIT = sp.Dummy("x0", real=True), sp.Dummy("x1", real=True)
MASKED_PRODUCT = sp.Lambda((_WEIGHT, _LOGIT),
                           sp.Piecewise((0, sp.Eq(_WEIGHT, 0)), (_WEIGHT * _LOGIT, True)))
"""``y z`` with ``0 · z = 0`` for every ``z``: a label or probability of 0 ignores its logit,
even a masked one (``-inf``), as PyTorch's cross-entropy with class indices does."""


def _logit_nodes(order: list[ir.Node]) -> set[int]:
    """Ids of the nodes that may hold masked logits (``-inf``): the arguments of softmaxes
    and log-sum-exps, and sums (log-softmax) with such a term."""
    logits = {id(n.arg) for n in order if isinstance(n, (ir.LogSumExp, ir.Softmax))}
    for n in order:
        if isinstance(n, ir.Add) and any(id(t) in logits for t in n.terms):
            logits.add(id(n))
        elif (isinstance(n, ir.Einsum) and len(n.operands) == 1 and id(n.operands[0]) in logits
              and len(set(n.specs[0])) == len(n.specs[0])):
            logits.add(id(n))  # the logits with their axes in another order
    return logits


def _masked_products(node: ir.Einsum, logits: set[int]) -> ir.Node | None:
    """``Σ y ⊙ z`` over logits ``z`` as ``Σ masked(y, z)``: ``0 · -inf`` is 0, not NaN."""
    for k, op in enumerate(node.operands):
        if id(op) not in logits:
            continue
        own = node.specs[k]
        # The partner reads the same entries, possibly in another axis order (a tensor
        # step's terms meet in the order of their indices): it is transposed to the logits'.
        partners = [j for j, spec in enumerate(node.specs) if j != k and spec == own] or [
            j for j, spec in enumerate(node.specs)
            if j != k and len(set(own)) == len(own) and sorted(spec) == sorted(own)]
        if len(partners) != 1:
            continue
        (j,) = partners
        partner = node.operands[j]
        if node.specs[j] != own:
            partner = ir.einsum([partner], [node.specs[j]], own)
        masked = ir.map_(MASKED_PRODUCT, partner, op)
        keep = [m for m in range(len(node.operands)) if m not in (j, k)]
        return ir.einsum([node.operands[m] for m in keep] + [masked],
                         [node.specs[m] for m in keep] + [node.specs[k]], node.out, node.coeff)
    return None


def _common_factor(node: ir.Add) -> ir.Node | None:
    """``Σ_i X_ij a_i + Σ_i X_ij b_i`` -> ``Σ_i X_ij (a_i + b_i)``: terms that are one
    contraction but for one operand become that contraction of the sum, and the sum, an
    elementwise cluster, is computed exactly (``Xᵀ σ(z)/n - Xᵀ y/n`` -> ``Xᵀ (σ(z) - y)/n``
    -> ``Xᵀ ((1 - y) σ(z) - y σ(-z))/n``)."""
    terms = node.terms
    if not all(isinstance(t, ir.Einsum) for t in terms):
        return None
    first = terms[0]
    if any(t.specs != first.specs or t.out != first.out for t in terms):
        return None
    differ = [k for k in range(len(first.operands))
              if any(t.operands[k] is not first.operands[k] for t in terms)]
    if len(differ) != 1 or len(first.operands) < 2:
        return None
    (k,) = differ
    spec = first.specs[k]
    if len(set(spec)) != len(spec):
        return None
    labels = tuple(range(len(spec)))
    parts = [ir.einsum([t.operands[k]], [labels], labels, t.coeff) for t in terms]
    combined = ir.add(*parts)
    operands = list(first.operands)
    operands[k] = _exact_elementwise(combined) or combined
    return ir.einsum(operands, first.specs, first.out)


def stabilize(roots: list[ir.Node], exact: bool = False) -> list[ir.Node]:
    """Rewrites the graph under ``roots`` into stable forms; returns the new roots (the same
    objects where nothing needed rewriting).

    Args:
        roots: the outputs.
        exact: also apply ``ACCURACY_REWRITES`` (for computing, not for printing).
    """
    # A named step already rewritten is a fixed point: its body is not walked again, so that
    # translating a chain of N named steps costs O(N), not O(N^2) (the accuracy pass, once
    # per kernel, walks everything: it looks for logits across steps).
    fixed = () if exact else _FIXED_NAMED
    order = ir.topological_order(list(roots), stop=fixed)
    tops = {id(r) for r in roots}
    for node in order:
        if not is_elementwise(node):
            tops.update(id(c) for c in node.children())
    new: dict[int, ir.Node] = {}
    logits = _logit_nodes(order) if exact else set()
    for node in order:
        if node in fixed:
            new[id(node)] = node
            continue
        rebuilt = ir.rebuilt(node, [new[id(c)] for c in node.children()])
        if id(node) in logits:
            logits.add(id(rebuilt))
        stable = None
        if exact and isinstance(rebuilt, ir.Add):
            factored = _common_factor(rebuilt)
            if factored is not None:
                rebuilt = factored
        if is_elementwise(rebuilt):
            if id(node) in tops:
                stable = _stable_elementwise(rebuilt)
                if exact:
                    stable = _exact_elementwise(rebuilt if stable is None else stable) or stable
        elif isinstance(rebuilt, ir.Einsum):
            stable = _stable_contraction(rebuilt)
        if exact and isinstance(stable or rebuilt, ir.Einsum):
            stable = _masked_products(stable or rebuilt, logits) or stable
        new[id(node)] = rebuilt if stable is None else stable
    if not exact:
        _FIXED_NAMED.update(new[id(n)] for n in order if isinstance(new[id(n)], ir.Named))
    return [new[id(r)] for r in roots]


_FIXED_NAMED: weakref.WeakSet = weakref.WeakSet()
"""Named steps whose bodies ``stabilize`` has rewritten (nodes are immutable and interned)."""



def exact(roots: list[ir.Node]) -> list[ir.Node]:
    """``stabilize`` with the accuracy rewrites: what kernels and the NumPy evaluator compute.

    Remembered for the last ``_EXACT_MEMO_SIZE`` root lists (nodes are immutable and
    interned): ``symdl.evaluate`` of one formula at many points (finite differences) rewrites
    it once."""
    key = tuple(id(r) for r in roots)
    hit = _EXACT_MEMO.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], roots, strict=True)):
        _EXACT_MEMO.move_to_end(key)
        return list(hit[1])
    result = stabilize(roots, exact=True)
    _EXACT_MEMO[key] = (tuple(roots), tuple(result))  # the roots kept alive: ids stay theirs
    if len(_EXACT_MEMO) > _EXACT_MEMO_SIZE:
        _EXACT_MEMO.popitem(last=False)
    return result


_EXACT_MEMO: OrderedDict[tuple[int, ...], tuple[tuple[ir.Node, ...], tuple[ir.Node, ...]]] = (
    OrderedDict())
_EXACT_MEMO_SIZE = 256


def stabilize_one(root: ir.Node) -> ir.Node:
    """``stabilize`` of a single root."""
    return stabilize([root])[0]


@ELEMENTWISE.register(ir.MatrixFunction)
def _matrix_function_not_elementwise(node: ir.Node) -> bool:
    return False  # each entry depends on the whole matrix (a factorisation)


@CLUSTER_ENTRY.register(ir.MatrixFunction)
def _matrix_function_atom(node: ir.Node, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    return cluster.atom(node, spec)



# Computed positions (symdl.ir.indexed) are not entry by entry: each is an atom of a cluster.
_INDEXED = (ir.AffineRead, ir.AffineScatter, ir.Take, ir.TakeAdjoint, ir.Max, ir.ArgMaxMask)
ELEMENTWISE.register(*_INDEXED)(_never_elementwise)
CLUSTER_ENTRY.register(*_INDEXED)(_opaque)



@ELEMENTWISE.register(ir.Scan)
def _scan_not_elementwise(node: ir.Node) -> bool:
    return False


@CLUSTER_ENTRY.register(ir.Scan)
def _scan_opaque(node: ir.Node, cluster: _Cluster, spec: Labels, depth: int) -> sp.Expr:
    return cluster.atom(node, spec)
