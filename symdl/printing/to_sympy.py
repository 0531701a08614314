"""IR -> SymPy: matrix notation where the pattern is recognised, index notation otherwise.

An einsum whose operands are matrices and vectors prints as matrix algebra by contracting
one summed index at a time: an index shared by two matrices is a product (``X^T G``),
vectors on an index are a diagonal between them (``X^T diag(s) X``), an index summed in one
matrix is a product with a ones vector, operands over the same indices are a Hadamard
product. When that fails (tensors of rank 3 or more, an index shared by three matrices), the
node prints in index notation: ``Sum`` over named indices of products of entries.

Each node kind has one rule in each of the three tables ``SCALAR``, ``MATRIX`` and ``INDEX``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.matrices.expressions.matexpr import MatrixElement

from symdl import ir
from symdl.define.recurrence import IndexedPart, PrintedScan, ScanEntry
from symdl.define.reductions import LogSumExpAlong, SoftmaxAlong
from symdl.define.vocabulary import Det, LogDet, LogSumExp, Norm, Softmax, Spectrum, Total
from symdl.errors import DerivationError, EvaluationError, UnsupportedError
from symdl.ir.rules import Rules
from symdl.ir.shape import squeeze
from symdl.primitives.sympy_results import (
    ArrayEntry,
    Diagonal,
    ElementwiseFunction,
    ElementwisePower,
    IdentityMatrix,
    MatrixTrace,
    lambdifiable,
)
from symdl.printing.reductions import ArgMaxOver, MaxOver
from symdl.printing.tensor_forms import matrix_form, tensor_form

INDEX_NAMES = "ijklmpqrstuvabcefgh"


@dataclass(frozen=True)
class IndexForm:
    """A tensor result in index notation: ``expr`` is the entry at ``indices``.

    Attributes:
        indices: the free index symbols, one per axis.
        shape: the dimension of each axis; ``indices[a]`` runs over ``0 .. shape[a] - 1``.
        expr: a scalar SymPy expression (``Sum`` over entries) with the indices free.
    """

    indices: tuple[sp.Symbol, ...]
    shape: tuple[sp.Expr, ...]
    expr: sp.Expr

    def __str__(self) -> str:
        idx = ", ".join(str(i) for i in self.indices)
        return f"[{idx}] -> {self.expr}"

    def lambdify(self, args: Sequence[sp.Basic], modules: str = "numpy") -> Callable:
        """A NumPy function of ``args`` that returns the whole tensor, entry by entry.

        ``sympy.lambdify`` has no notion of an expression with free indices; this lambdifies
        the entry (a scalar with ``Sum``s over the other indices) as a function of ``args``
        and the free indices, and fills an array of the concrete shape. The sizes come from
        the arrays passed for ``MatrixSymbol``/``IndexedBase`` arguments, or from dimension
        symbols listed in ``args``. Meant for checks at small sizes: each entry is a Python
        call. For speed, compile the derivation (``der.compile()``).

        Args:
            args: the symbols the function takes, in order (as for ``sympy.lambdify``).
            modules: ``sympy.lambdify``'s ``modules``.
        """
        args = list(args)
        # Dimension symbols the entry reads (Sum ranges, ones vectors) that args leave out
        # are bound from the arrays' shapes.
        symbols = set(self.expr.free_symbols).union(
            *[sp.sympify(dim).free_symbols for dim in self.shape])
        extra = sorted((s for s in symbols - set(args) - set(self.indices)
                        if isinstance(s, sp.Symbol) and s.is_integer), key=str)
        entry = sp.lambdify(args + extra + list(self.indices), self.expr, modules)
        shape = self.shape

        def tensor(*values):
            if len(values) != len(args):
                raise EvaluationError(
                    f"expected {len(args)} arguments ({args}), got {len(values)}")
            sizes: dict[sp.Basic, sp.Integer] = {}
            for a, v in zip(args, values, strict=True):
                symbolic = getattr(a, "shape", None)
                if isinstance(a, sp.Symbol) and a.is_integer:
                    sizes[a] = sp.Integer(int(v))
                elif symbolic is not None:
                    for dim, size in zip(symbolic, np.shape(v), strict=False):
                        if isinstance(dim, sp.Symbol):
                            sizes.setdefault(dim, sp.Integer(size))
            unknown = [s for s in extra if s not in sizes]
            if unknown:
                raise EvaluationError(
                    f"the size {unknown[0]} is not known from the arguments; add the dimension "
                    "symbol to args, or an array that has it in its shape")
            concrete = tuple(int(sp.sympify(dim).xreplace(sizes)) for dim in shape)
            bound = [int(sizes[s]) for s in extra]
            out = np.empty(concrete)
            for idx in np.ndindex(*concrete):
                out[idx] = entry(*values, *bound, *idx)
            return out

        return tensor


class _NoMatrixFormError(Exception):
    """The einsum has no matrix form; print it in index notation."""


@dataclass
class _Factor:
    expr: sp.Basic
    row: int | None
    col: int | None

    def oriented(self, row: int | None) -> _Factor:
        if self.row == row:
            return self
        return _Factor(_transpose(self.expr), self.col, self.row)


def _transpose(expr: sp.Basic) -> sp.Basic:
    """``expr^T`` without SymPy's recursive push of the transpose into every subexpression,
    which costs time exponential in the depth of an inlined network."""
    if isinstance(expr, sp.Transpose):
        return expr.arg
    if isinstance(expr, sp.MatMul) and _small(expr):
        # By hand: SymPy's MatMul transpose calls doit() on every factor, which walks a
        # shared subexpression once per path to it (exponential in an inlined network).
        scalars = [a for a in expr.args if not isinstance(a, sp.MatrixExpr)]
        mats = [a for a in expr.args if isinstance(a, sp.MatrixExpr)]
        return sp.MatMul(*scalars, *[_transpose(m) for m in reversed(mats)])
    if isinstance(expr, (sp.MatrixSymbol, sp.OneMatrix)):
        return expr.T
    if isinstance(expr, (DiagMatrix, sp.Identity)) or (expr.shape[0] == expr.shape[1] == 1):
        return expr
    return sp.Transpose(expr)


def _small(expr: sp.Basic) -> bool:
    """A product of symbols and ones vectors, whose transpose prints better expanded."""
    if isinstance(expr, sp.MatMul):
        return all(isinstance(a, (sp.MatrixSymbol, sp.OneMatrix, sp.Transpose))
                   or not isinstance(a, sp.MatrixExpr) for a in expr.args)
    return True


SCALAR: Rules[Callable[[ir.Node, SympyPrinter], sp.Expr]] = Rules("IR-to-SymPy (scalars)")
"""node kind -> (rank-0 node, printer) -> a scalar SymPy expression."""

MATRIX: Rules[Callable[[ir.Node, SympyPrinter], sp.Basic]] = Rules("IR-to-SymPy (matrices)")
"""node kind -> (rank-2 node, printer) -> a matrix expression, or ``_NoMatrixFormError``."""

INDEX: Rules[Callable[[ir.Node, SympyPrinter, tuple], sp.Expr]] = Rules(
    "IR-to-SymPy (index notation)")
"""node kind -> (node, printer, index symbols) -> the node's entry at those indices."""


class SympyPrinter:
    """Prints IR nodes as SymPy expressions.

    Args:
        inline_named: print a named intermediate as its definition (a closed form) rather than
            as its symbol (a step of the derivation).
    """

    def __init__(self, inline_named: bool = True, aliases: dict[int, ir.Named] | None = None,
                 reserved: set[str] | None = None, by_name: set[int] | None = None,
                 forms: bool = True):
        self.inline_named = inline_named
        # False: every tensor in index notation, never as a convolution, pooling or flatten
        # (what a reader of SymPy alone can evaluate), with its shape as it is.
        self.forms = forms
        # Named nodes (by id) printed as their symbol even when inline_named: written out,
        # they would be too large (see symdl.ir.naming.INLINE_LIMIT).
        self.by_name = set(by_name or ())
        self.aliases = {} if inline_named else dict(aliases or {})
        self.reserved = set(reserved or ())
        self._memo: dict[int, sp.Basic] = {}
        self._scalar_memo: dict[int, tuple[ir.Node, sp.Basic]] = {}
        self._index_counter = 0

    def _inlined(self, node: ir.Named) -> bool:
        return self.inline_named and id(node) not in self.by_name

    # -- entry points ---------------------------------------------------------------------

    def result(self, node: ir.Node) -> sp.Basic | IndexForm:
        """A matrix expression for rank 2, a scalar for rank 0, an ``IndexForm`` otherwise.

        Tensors of rank 3 or more lose their size-1 axes first: the Hessian of a ``d x 1``
        parameter is ``d x d``.
        """
        try:
            return self._result(node)
        except RecursionError:
            raise DerivationError(
                "this closed form is nested too deeply for SymPy, which builds and queries "
                "matrix expressions recursively (a closed form through a long chain of named "
                "steps); ask for it in terms of the named steps instead: "
                "der.gradient(p, inline=False) or der.equations()") from None

    def _result(self, node: ir.Node) -> sp.Basic | IndexForm:
        self._index_counter = 0
        if node.rank not in (0, 2) and self.forms:
            form = tensor_form(node, self)  # a convolution, a pooling, ... (tensor_forms)
            if form is not None:
                return form
            node = squeeze(distribute(node))
        self._warm(node)
        # A product with a sum of tensors (a block of a Hessian times a direction) has a
        # matrix form once multiplied out: -(1 + mu) G, not Sum(δ δ G) in index notation.
        for candidate in (node, distribute(node)) if node.rank <= 2 else (node,):
            try:
                if candidate.rank == 0:
                    return lambdifiable(_array_entries(self.scalar(candidate), ()))
                if candidate.rank == 2:
                    return lambdifiable(self.matrix(candidate))
            except _NoMatrixFormError:
                pass
        indices = tuple(self._fresh_index() for _ in node.shape)
        entry = _array_entries(self.index(node, indices), indices)
        return IndexForm(indices, node.shape, lambdifiable(entry))

    def definition(self, node: ir.Node) -> sp.Basic | IndexForm:
        """Like ``result``, but a node that has a name is written out, not named."""
        alias = self.aliases.pop(id(node), None)
        try:
            return self.result(node)
        finally:
            if alias is not None:
                self.aliases[id(node)] = alias

    def scalar(self, node: ir.Node) -> sp.Expr:
        if node.rank != 0:
            raise ValueError(f"scalar() of a node of shape {node.shape}")
        if id(node) in self._scalar_memo:
            return self._scalar_memo[id(node)][1]
        if id(node) in self.aliases:
            return self.aliases[id(node)].symbol
        return SCALAR(node, self)

    def matrix(self, node: ir.Node) -> sp.Basic:
        if node.rank != 2:
            raise ValueError(f"matrix() of a node of shape {node.shape}")
        # The node is kept with its result: an id is unique only while its object lives.
        key = id(node)
        if key not in self._memo:
            self._memo[key] = (node, self._matrix(node))
        return self._memo[key][1]

    def _warm(self, root: ir.Node) -> None:
        """Prints the matrices and scalars under ``root`` children first when it is deep.

        ``matrix`` and ``scalar`` call themselves on the operands, once per level: a closed
        form through a chain of a thousand named steps would exhaust Python's recursion limit.
        Printed bottom-up into the memo, each call finds its operands there and goes one level
        down only. Shallow results (every usual one) are printed as before, top-down, so
        their index names do not change.
        """
        order = self._print_order(root)
        if order is None:
            return
        counter = self._index_counter
        for node in order:
            if id(node) in self.aliases:
                continue
            try:
                if node.rank == 2:
                    self.matrix(node)
                elif node.rank == 0 and id(node) not in self._scalar_memo:
                    self._scalar_memo[id(node)] = (node, self.scalar(node))
            except (_NoMatrixFormError, UnsupportedError):
                continue  # printed in index notation when the result needs it
        self._index_counter = counter

    def _print_order(self, root: ir.Node, shallow: int = 40) -> list[ir.Node] | None:
        """The nodes that printing ``root`` visits, children first, or None when none of
        them is nested more than ``shallow`` levels deep."""
        depth: dict[int, int] = {}
        order: list[ir.Node] = []
        stack: list[tuple[ir.Node, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            children = () if id(node) in self.aliases or (
                isinstance(node, ir.Named) and not self.inline_named) else node.children()
            if expanded:
                depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
                order.append(node)
                continue
            if id(node) in depth:
                continue
            depth[id(node)] = 0  # on the stack; replaced by its depth when expanded
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in depth)
        return order if depth.get(id(root), 0) > shallow else None

    # -- matrices -------------------------------------------------------------------------

    def _matrix(self, node: ir.Node) -> sp.Basic:
        if id(node) in self.aliases:
            return _matrix_symbol(self.aliases[id(node)])
        form = matrix_form(node, self) if self.forms else None  # a flatten, ... (tensor_forms)
        if form is not None:
            return form
        return MATRIX(node, self)

    def _add(self, node: ir.Add) -> sp.Basic:
        """A sum, with the common scalar factor of its terms pulled out: ``(P - Y)/n``."""
        placeholders, printed = [], {}
        for k, term in enumerate(node.terms):
            coeff = term.coeff if isinstance(term, ir.Einsum) else sp.Integer(1)
            body = ir.scale(term, 1 / coeff) if coeff != 1 else term
            p = sp.Dummy(f"t{k}")
            printed[p] = self.matrix(body)
            placeholders.append(coeff * p)
        grouped = sp.gcd_terms(sp.Add(*placeholders))
        common, inner = sp.Integer(1), grouped
        if isinstance(grouped, sp.Mul):
            adds = [a for a in grouped.args if a.free_symbols & set(printed)]
            if len(adds) == 1:
                inner = adds[0]
                common = sp.Mul(*[a for a in grouped.args if a is not inner])
        terms = []
        for t in sp.Add.make_args(sp.expand(inner)):
            c, rest = t.as_coeff_mul()
            coeff = sp.Mul(c, *[f for f in rest if not f.free_symbols & set(printed)])
            (p,) = [f for f in rest if f.free_symbols & set(printed)]
            terms.append(_scaled(coeff, printed[p]))
        return _scaled(common, _factor_common(terms))

    def _map(self, node: ir.Map) -> sp.Basic:
        args = [self.matrix(a) for a in node.args]
        shape = node.shape
        env = dict(zip(node.fn.variables, args, strict=True))
        return _elementwise_matrix(node.fn.expr, env, shape)

    def _einsum_matrix(self, node: ir.Einsum) -> sp.Basic:
        dims = node.label_dims()

        def label(lab: int) -> int | None:
            return None if dims[lab] == 1 else lab

        out = [label(lab) for lab in node.out]
        if len(out) not in (0, 2):
            raise _NoMatrixFormError(node)
        scalars: list[sp.Expr] = [node.coeff]
        factors: list[_Factor] = []
        traced: set[int] = set()
        for op, spec in zip(node.operands, node.specs, strict=False):
            if op.rank == 0:
                scalars.append(self.scalar(op))
                continue
            if isinstance(op, ir.Ones) and all(label(lab) is None for lab in spec):
                continue
            if op.rank == 1:
                if not isinstance(op, ir.Ones):
                    raise _NoMatrixFormError(node)
                expr, labels = sp.OneMatrix(op.shape[0], 1), (label(spec[0]), None)
            elif op.rank == 2:
                expr, labels = self.matrix(op), (label(spec[0]), label(spec[1]))
            else:
                raise _NoMatrixFormError(node)
            if labels[0] is not None and labels[0] == labels[1]:
                if labels[0] in node.out or sum(spec_.count(labels[0])
                                                for spec_ in node.specs) != 2:
                    raise _NoMatrixFormError(node)
                scalars.append(sp.Trace(expr))  # Σ_i M[i, i], summed here alone
                traced.add(labels[0])
                continue
            if labels == (None, None):
                scalars.append(MatrixTrace(expr))
                continue
            factors.append(_Factor(expr, *labels))
        summed = [lab for lab in dims
                  if label(lab) is not None and lab not in node.out and lab not in traced]
        factors = _merge(factors)
        if not out and len(factors) == 1 and factors[0].col is not None:
            return sp.Mul(*scalars) * Total(factors[0].expr)
        # Contract first an index that at most two matrices share: in X^T (N ⊙ (W V)) the
        # index inside W V goes before the one X^T shares with the Hadamard product.
        while summed:
            lab = next((lab for lab in summed if len(_split(factors, lab)[0]) <= 2), summed[0])
            summed.remove(lab)
            factors = _contract(factors, lab, dims[lab], scalars)
            factors = _merge(factors)
        return _assemble(factors, out, node.shape, scalars)

    # -- index notation -------------------------------------------------------------------

    def _fresh_index(self) -> sp.Symbol:
        while True:
            k = self._index_counter
            self._index_counter += 1
            round_, letter = divmod(k, len(INDEX_NAMES))
            name = INDEX_NAMES[letter] + (str(round_) if round_ else "")
            if name not in self.reserved:
                return sp.Symbol(name, integer=True, nonnegative=True)

    def index(self, node: ir.Node, indices: tuple) -> sp.Expr:
        """The entry of ``node`` at ``indices`` as a scalar SymPy expression."""
        if id(node) in self.aliases:
            return _entry(self.aliases[id(node)].symbol, indices)
        return INDEX(node, self, indices)


# -- the rules of each node kind ----------------------------------------------------------


@SCALAR.register(ir.Zero)
def _scalar_zero(node: ir.Zero, printer: SympyPrinter) -> sp.Expr:
    return sp.Integer(0)


@SCALAR.register(ir.Leaf)
def _scalar_leaf(node: ir.Leaf, printer: SympyPrinter) -> sp.Expr:
    return node.symbol


@SCALAR.register(ir.Named)
def _scalar_named(node: ir.Named, printer: SympyPrinter) -> sp.Expr:
    return printer.scalar(node.body) if printer._inlined(node) else node.symbol


@SCALAR.register(ir.Add)
def _scalar_add(node: ir.Add, printer: SympyPrinter) -> sp.Expr:
    return sp.Add(*[printer.scalar(t) for t in node.terms])


@SCALAR.register(ir.Map)
def _scalar_map(node: ir.Map, printer: SympyPrinter) -> sp.Expr:
    return node.fn(*[printer.scalar(a) for a in node.args])


@SCALAR.register(ir.Einsum)
def _scalar_einsum(node: ir.Einsum, printer: SympyPrinter) -> sp.Expr:
    try:
        return printer._einsum_matrix(node)
    except _NoMatrixFormError:
        return printer.index(node, ())


@SCALAR.register(ir.Ones, ir.Identity, ir.LogSumExp, ir.Softmax, ir.Solve)
def _scalar_entry(node: ir.Node, printer: SympyPrinter) -> sp.Expr:
    # Never a scalar in practice (ones(()) is the constant 1; the others are matrices): the
    # entry of a rank-0 node in index notation is the node.
    return printer.index(node, ())


@SCALAR.register(ir.Det)
def _scalar_det(node: ir.Det, printer: SympyPrinter) -> sp.Expr:
    kind = LogDet if node.log else Det
    return kind(printer.matrix(node.a), node.spd)


@MATRIX.register(ir.Det)
def _matrix_det(node: ir.Det, printer: SympyPrinter) -> sp.Basic:
    raise _NoMatrixFormError(node)  # a scalar (matrix() refuses rank 0 before this)


@INDEX.register(ir.Det)
def _index_det(node: ir.Det, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return printer.scalar(node)  # a scalar has no indices


@MATRIX.register(ir.Leaf)
def _matrix_leaf(node: ir.Leaf, printer: SympyPrinter) -> sp.Basic:
    if not isinstance(node.symbol, sp.MatrixExpr):
        raise _NoMatrixFormError(node)  # an IndexedBase stays in index notation
    return node.symbol


@MATRIX.register(ir.Named)
def _matrix_named(node: ir.Named, printer: SympyPrinter) -> sp.Basic:
    return printer.matrix(node.body) if printer._inlined(node) else _matrix_symbol(node)


def _matrix_symbol(node: ir.Named) -> sp.Basic:
    """The symbol of a named rank-2 step; one written in index notation (an IndexedBase,
    ``mu[b, s]``) has no matrix form, so the expression reading it stays in index notation."""
    if isinstance(node.symbol, sp.IndexedBase):
        raise _NoMatrixFormError(node)
    return node.symbol


@MATRIX.register(ir.Ones)
def _matrix_ones(node: ir.Ones, printer: SympyPrinter) -> sp.Basic:
    return sp.OneMatrix(*node.shape)


@MATRIX.register(ir.Zero)
def _matrix_zero(node: ir.Zero, printer: SympyPrinter) -> sp.Basic:
    return sp.ZeroMatrix(*node.shape)


@MATRIX.register(ir.Identity)
def _matrix_identity(node: ir.Identity, printer: SympyPrinter) -> sp.Basic:
    return IdentityMatrix(node.dim)


@MATRIX.register(ir.Add)
def _matrix_add(node: ir.Add, printer: SympyPrinter) -> sp.Basic:
    return printer._add(node)


@MATRIX.register(ir.Map)
def _matrix_map(node: ir.Map, printer: SympyPrinter) -> sp.Basic:
    return printer._map(node)


@MATRIX.register(ir.LogSumExp)
def _matrix_logsumexp(node: ir.LogSumExp, printer: SympyPrinter) -> sp.Basic:
    return LogSumExp(printer.matrix(node.arg), node.axis)


@MATRIX.register(ir.Softmax)
def _matrix_softmax(node: ir.Softmax, printer: SympyPrinter) -> sp.Basic:
    return Softmax(printer.matrix(node.arg), node.axis)


@MATRIX.register(ir.Solve)
def _matrix_solve(node: ir.Solve, printer: SympyPrinter) -> sp.Basic:
    inverse = sp.Inverse(printer.matrix(node.a))
    if isinstance(node.b, ir.Identity):  # A^{-1} I is the inverse itself
        return inverse
    return sp.MatMul(inverse, printer.matrix(node.b))


@MATRIX.register(ir.Einsum)
def _matrix_einsum(node: ir.Einsum, printer: SympyPrinter) -> sp.Basic:
    return printer._einsum_matrix(node)


@INDEX.register(ir.Leaf)
def _index_leaf(node: ir.Leaf, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return _entry(node.symbol, indices)


@INDEX.register(ir.Named)
def _index_named(node: ir.Named, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    if printer._inlined(node):
        return printer.index(node.body, indices)
    return _entry(node.symbol, indices)


@INDEX.register(ir.Ones)
def _index_ones(node: ir.Ones, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return sp.Integer(1)


@INDEX.register(ir.Zero)
def _index_zero(node: ir.Zero, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return sp.Integer(0)


@INDEX.register(ir.Identity)
def _index_identity(node: ir.Identity, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return sp.KroneckerDelta(*indices)


@INDEX.register(ir.Add)
def _index_add(node: ir.Add, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return sp.Add(*[printer.index(t, indices) for t in node.terms])


@INDEX.register(ir.Map)
def _index_map(node: ir.Map, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return node.fn(*[printer.index(a, indices) for a in node.args])


@INDEX.register(ir.Einsum)
def _index_einsum(node: ir.Einsum, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    dims = node.label_dims()
    names = dict(zip(node.out, indices, strict=False))
    limits = []
    for lab in dims:
        if lab not in names:
            names[lab] = sp.Integer(0) if dims[lab] == 1 else printer._fresh_index()
            if dims[lab] != 1:
                limits.append((names[lab], 0, dims[lab] - 1))
    body = node.coeff * sp.Mul(*[
        printer.index(op, tuple(names[lab] for lab in spec))
        for op, spec in zip(node.operands, node.specs, strict=False)
    ])
    return sp.Sum(body, *limits) if limits else body


@INDEX.register(ir.LogSumExp, ir.Softmax)
def _index_row_function(node: ir.Node, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    # An entry of the matrix expression reads better than exp(...)/Sum(exp(...)), where the
    # argument has one (not over a step written in index notation).
    if node.rank == 2:
        try:
            return MatrixElement(printer.matrix(node), *indices)
        except _NoMatrixFormError:
            pass
    return _index_along(node, printer, indices)


def _index_along(node: ir.LogSumExp | ir.Softmax, printer: SympyPrinter,
                 indices: tuple) -> sp.Expr:
    """An entry of a softmax or log-sum-exp of any rank: ``softmax(S[b, s, t], axis=t)``,
    ``logsumexp(S[b, s, k], axis=k)`` (the lane's index is a fresh one where the entry's own
    is not a free index symbol)."""
    lane = list(indices)
    own = indices[node.axis]
    if isinstance(node, ir.LogSumExp) or not isinstance(own, sp.Symbol) or own in (
            indices[:node.axis] + indices[node.axis + 1:]):
        lane[node.axis] = printer._fresh_index()
    body = printer.index(node.arg, tuple(lane))
    length = node.arg.shape[node.axis]
    if isinstance(node, ir.LogSumExp):
        return LogSumExpAlong(body, lane[node.axis], length)
    if lane[node.axis] is own:
        return SoftmaxAlong(body, own, length)
    # softmax(...)[own] with a fresh lane index: the entry at own, written as exp / Σ exp.
    k = lane[node.axis]
    at_own = body.xreplace({k: own})
    return sp.exp(at_own - LogSumExpAlong(body, k, length))


@INDEX.register(ir.Solve)
def _index_solve(node: ir.Solve, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    if node.rank == 2:
        return MatrixElement(printer.matrix(node), *indices)
    # A right-hand side with more axes (a tangent of a matrix parameter, in a Hessian block):
    # (A^{-1} B)[i, r...] = Σ_k (A^{-1})[i, k] B[k, r...].
    k = printer._fresh_index()
    inverse = MatrixElement(sp.Inverse(printer.matrix(node.a)), indices[0], k)
    body = inverse * printer.index(node.b, (k,) + tuple(indices[1:]))
    return sp.Sum(body, (k, 0, node.a.shape[0] - 1))


def _array_entries(expr: sp.Expr, free: tuple) -> sp.Expr:
    """``expr`` with each array read at a computed position (``G[i, k - u]``) or under a Sum
    or a maximum (``G[q, i]`` in a Sum over ``q``) an ``ArrayEntry``: 0 outside the array, and
    not a free symbol of the Sum (SymPy's ``Indexed`` is its own free symbol), so the result
    lambdifies by the names of its arrays. A plain read ``Q[j, i]`` stays SymPy's."""
    def entry(e: sp.Basic) -> sp.Basic:
        return ArrayEntry(e.base, *e.indices)

    def plain(e: sp.Basic) -> bool:
        return isinstance(e, sp.Indexed) and not isinstance(e, ArrayEntry)

    def bound(e: sp.Basic) -> bool:
        return isinstance(e, ExprWithLimits) and bool(e.function.atoms(sp.Indexed))

    expr = expr.replace(bound, lambda e: e.func(e.function.replace(plain, entry), *e.limits))
    return expr.replace(lambda e: plain(e) and not all(i in free for i in e.indices), entry)


def _entry(symbol: sp.Basic, indices: tuple) -> sp.Expr:
    if not indices:
        return symbol
    if isinstance(symbol, sp.IndexedBase):
        return symbol[indices]
    return symbol[indices[0], indices[1]]


DISTRIBUTED_TERMS_LIMIT = 128
"""``distribute`` leaves a product of sums as it is when multiplied out it would have more
terms than this: the terms of nested sums multiply (a transformer block's Hessian has
millions), and a product of sums prints in index notation as well."""


def distribute(node: ir.Node) -> ir.Node:
    """Multiplies out products with sums of rank 3 or more, which have no matrix form, so
    that each term can be recognised on its own (Hessian blocks are such sums)."""
    if _distributed_terms(node, {}) > DISTRIBUTED_TERMS_LIMIT:
        return node
    return _distribute(node)


def _distribute(node: ir.Node) -> ir.Node:
    if isinstance(node, ir.Add):
        return ir.add(*[_distribute(t) for t in node.terms])
    if isinstance(node, ir.Einsum):
        for k, op in enumerate(node.operands):
            if isinstance(op, ir.Add) and op.rank > 2:
                terms = []
                for t in op.terms:
                    operands = node.operands[:k] + (t,) + node.operands[k + 1:]
                    terms.append(_distribute(ir.einsum(operands, node.specs, node.out,
                                                       node.coeff)))
                return ir.add(*terms)
    return node


def _distributed_terms(node: ir.Node, memo: dict[int, int]) -> int:
    """How many terms ``_distribute(node)`` has (capped past the limit)."""
    if id(node) not in memo:
        count = 1
        if isinstance(node, ir.Add):
            count = sum(_distributed_terms(t, memo) for t in node.terms)
        elif isinstance(node, ir.Einsum):
            for op in node.operands:
                if isinstance(op, ir.Add) and op.rank > 2:
                    count *= _distributed_terms(op, memo)
        memo[id(node)] = min(count, DISTRIBUTED_TERMS_LIMIT + 1)
    return memo[id(node)]


def _elementwise_matrix(body: sp.Expr, env: dict, shape: tuple) -> sp.Basic:
    """A scalar body over matrix-valued variables as matrix algebra (``1 - A ⊙ A``)."""
    rows, cols = shape
    if body in env:
        return env[body]
    if not body.free_symbols & set(env):
        return _scaled(body, sp.OneMatrix(rows, cols))
    if isinstance(body, sp.Add):
        return sp.MatAdd(*[_elementwise_matrix(t, env, shape) for t in body.args])
    if isinstance(body, sp.Mul):
        coeff = sp.Mul(*[f for f in body.args if not f.free_symbols & set(env)])
        parts = [_elementwise_matrix(f, env, shape) for f in body.args
                 if f.free_symbols & set(env)]
        product = parts[0] if len(parts) == 1 else _hadamard_product(parts)
        return _scaled(coeff, product)
    if isinstance(body, sp.Pow) and body.exp.is_Integer and body.exp > 0:
        return ElementwisePower(_elementwise_matrix(body.base, env, shape), body.exp)
    if isinstance(body, sp.Function) and len(body.args) == 1:
        return _apply(body.func, _elementwise_matrix(body.args[0], env, shape))
    variables = [v for v in env if v in body.free_symbols]
    if len(variables) == 1:
        (v,) = variables
        return _apply(sp.Lambda(v, body), env[v])
    raise _NoMatrixFormError(body)


def _apply(function: sp.Basic, matrix: sp.Basic) -> sp.Basic:
    """``function`` entry by entry, as an object that prints as ``f(M)`` and lambdifies."""
    return ElementwiseFunction(function, matrix)


def _times(coeff: sp.Expr, expr: sp.Basic) -> sp.Basic:
    """``coeff * expr`` canonicalised at the top only: SymPy's ``*`` runs ``doit`` over the
    whole of ``expr``, which re-evaluates every function below it, once per enclosing level
    (time exponential in the depth of a closed form through many named steps)."""
    return sp.MatMul(coeff, expr).doit(deep=False)


def _scaled(coeff: sp.Expr, expr: sp.Basic) -> sp.Basic:
    """``coeff * expr`` with the scalars of a product collected into one coefficient (as
    SymPy's ``*`` would, but without its ``doit()`` of the whole product)."""
    if coeff == 1:
        return expr
    if isinstance(expr, sp.MatMul):
        mats = [a for a in expr.args if isinstance(a, sp.MatrixExpr)]
        coeff = sp.Mul(coeff, *[a for a in expr.args if not isinstance(a, sp.MatrixExpr)])
        if coeff == 1:
            return mats[0] if len(mats) == 1 else sp.MatMul(*mats)
        return sp.MatMul(coeff, *mats)
    return sp.MatMul(coeff, expr)


def _split_matmul(term: sp.Basic) -> tuple[sp.Expr, list[sp.Basic]]:
    if isinstance(term, sp.MatMul):
        coeff = sp.Mul(*[a for a in term.args if not isinstance(a, sp.MatrixExpr)])
        return coeff, [a for a in term.args if isinstance(a, sp.MatrixExpr)]
    return sp.Integer(1), [term]


def _factor_common(terms: list[sp.Basic]) -> sp.Basic:
    """``A B + A C`` -> ``A (B + C)``: pulls a shared leftmost or rightmost factor out."""
    split = [_split_matmul(t) for t in terms]
    if len(terms) > 1 and all(len(f) > 1 for _, f in split):
        first = split[0][1][0]
        if all(f[0] == first for _, f in split):
            rest = [sp.MatMul(c, *f[1:]) if c != 1 else sp.MatMul(*f[1:]) for c, f in split]
            return sp.MatMul(first, _factor_common([r.doit(deep=False) for r in rest]))
        last = split[0][1][-1]
        if all(f[-1] == last for _, f in split):
            rest = [sp.MatMul(c, *f[:-1]) if c != 1 else sp.MatMul(*f[:-1]) for c, f in split]
            return sp.MatMul(_factor_common([r.doit(deep=False) for r in rest]), last)
    return sp.MatAdd(*terms)


def _hadamard(exprs: list[sp.Basic]) -> sp.Basic:
    exprs = [e for e in exprs if not isinstance(e, sp.OneMatrix)] or exprs[:1]
    return exprs[0] if len(exprs) == 1 else _hadamard_product(exprs)


def _hadamard_product(parts: list[sp.Basic]) -> sp.Basic:
    """``A ⊙ B ⊙ ...`` with nested products flattened, factors in the order given."""
    flat = []
    for p in parts:
        flat.extend(p.args if isinstance(p, sp.HadamardProduct) else [p])
    return sp.HadamardProduct(*flat)


def _merge(factors: list[_Factor]) -> list[_Factor]:
    """Joins factors over the same indices into Hadamard products; vectors become columns."""
    groups: dict[frozenset, list[_Factor]] = {}
    order: list[frozenset] = []
    for f in factors:
        if f.row is None and f.col is not None:
            f = f.oriented(f.col)
        key = frozenset(lab for lab in (f.row, f.col) if lab is not None)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(f)
    merged = []
    for key in order:
        group = groups[key]
        first = group[0]
        exprs = [first.expr] + [g.oriented(first.row).expr for g in group[1:]]
        merged.append(_Factor(_hadamard(exprs), first.row, first.col))
    return merged


def _split(factors: list[_Factor], lab: int):
    mats = [f for f in factors if f.row is not None and f.col is not None and lab in (f.row, f.col)]
    vecs = [f for f in factors if f.col is None and f.row == lab]
    rest = [f for f in factors if f not in mats and f not in vecs]
    return mats, vecs, rest


def _contract(factors: list[_Factor], lab: int, dim: sp.Expr, scalars: list) -> list[_Factor]:
    mats, vecs, rest = _split(factors, lab)
    weight = vecs[0].expr if vecs else None
    if len(mats) == 2:
        left = mats[0].oriented(_other(mats[0], lab))
        right = mats[1].oriented(lab)
        middle = [Diagonal(weight)] if weight is not None else []
        product = sp.MatMul(left.expr, *middle, right.expr)
        return rest + [_Factor(product, left.row, right.col)]
    if len(mats) == 1:
        m = mats[0].oriented(_other(mats[0], lab))
        vector = weight if weight is not None else sp.OneMatrix(dim, 1)
        return rest + [_Factor(sp.MatMul(m.expr, vector), m.row, None)]
    if len(mats) == 0 and vecs:
        scalars.append(Total(weight))
        return rest
    raise _NoMatrixFormError(lab)


def _other(f: _Factor, lab: int) -> int | None:
    return f.col if f.row == lab else f.row


def _assemble(factors: list[_Factor], out: list, shape: tuple, scalars: list) -> sp.Basic:
    coeff = sp.Mul(*scalars)
    if not out:
        if factors:
            raise _NoMatrixFormError(factors)
        return coeff
    o1, o2 = out
    mats = [f for f in factors if f.row is not None and f.col is not None]
    left = [f.expr for f in factors if f.col is None and f.row == o1 and f.row is not None]
    right = [f.expr for f in factors if f.col is None and f.row == o2 and f.row is not None]
    if len(mats) + len(left) + len(right) != len(factors) or len(mats) > 1:
        raise _NoMatrixFormError(factors)
    if o1 is not None and o2 is not None:
        if mats and isinstance(mats[0].expr, sp.Identity) and (left or right):
            expr = Diagonal(_hadamard(left + right))
        elif mats:
            core = mats[0].oriented(o1).expr
            parts = ([Diagonal(left[0])] if left else []) + [core] + (
                [Diagonal(right[0])] if right else [])
            expr = sp.MatMul(*parts) if len(parts) > 1 else core
        elif left and right:
            expr = sp.MatMul(left[0], _transpose(right[0]))
        else:
            raise _NoMatrixFormError(factors)
    elif o1 is not None:
        expr = left[0] if left else None
    elif o2 is not None:
        expr = _transpose(right[0]) if right else None
    else:
        expr = sp.OneMatrix(1, 1)
    if expr is None:
        raise _NoMatrixFormError(factors)
    return _scaled(coeff, expr)


_NORM_OF_KIND = {"fro": "fro", "nuclear": "nuc", "norm2": "2"}


@SCALAR.register(ir.MatrixFunction)
def _scalar_matrix_function(node: ir.MatrixFunction, printer: SympyPrinter) -> sp.Expr:
    return Norm(printer.matrix(node.a), _NORM_OF_KIND[node.kind])  # the scalar kinds


@MATRIX.register(ir.MatrixFunction)
def _matrix_matrix_function(node: ir.MatrixFunction, printer: SympyPrinter) -> sp.Basic:
    if node.rank != 2:
        raise _NoMatrixFormError(node)
    return Spectrum(printer.matrix(node.a), node.kind)


@INDEX.register(ir.MatrixFunction)
def _index_matrix_function(node: ir.MatrixFunction, printer: SympyPrinter,
                           indices: tuple) -> sp.Expr:
    if node.rank == 0:
        return printer.scalar(node)
    if node.rank > 2:  # Φ of a tangent with seed axes: the lower triangle, half the diagonal
        i, j = indices[:2]
        return printer.index(node.a, indices) * sp.Piecewise(
            (1, sp.StrictGreaterThan(i, j)), (sp.Rational(1, 2), sp.Eq(i, j)), (0, True))
    return MatrixElement(printer.matrix(node), *indices)



# -- computed positions (symdl.ir.indexed): windows, scatters, gathers, maxima -----------------
#
# In printed results an array read at a position outside its range is 0 (zero padding), as in
# the definitions symdl reads (symdl.define.positions): X[b, 2*t + k - 1] at a position -1 is 0.


def _no_matrix_form(node: ir.Node, printer: SympyPrinter) -> sp.Basic:
    raise _NoMatrixFormError(node)  # printed in index notation


def _index_scalar(node: ir.Node, printer: SympyPrinter) -> sp.Expr:
    return printer.index(node, ())


_POSITIONAL = (ir.AffineRead, ir.AffineScatter, ir.Take, ir.TakeAdjoint, ir.Max, ir.ArgMaxMask)
SCALAR.register(*_POSITIONAL)(_index_scalar)
MATRIX.register(*_POSITIONAL)(_no_matrix_form)


@INDEX.register(ir.AffineRead)
def _index_affine_read(node: ir.AffineRead, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    # X[b, 2*t + k - 1]: the array at the affine positions (0 outside it).
    return printer.index(node.arg, tuple(sp.expand(m.at(indices)) for m in node.index))


@INDEX.register(ir.AffineScatter)
def _index_affine_scatter(node: ir.AffineScatter, printer: SympyPrinter,
                          indices: tuple) -> sp.Expr:
    """The entries of the argument that land at ``indices``, in gather form: the transposed
    convolution ``dX[b, u] = Σ_t G[b, t, u + p - s*t]`` (the condition ``s*t + k - p = u``
    solved for ``k``). A condition is solved for an index of coefficient ±1 along which the
    argument prints as 0 outside its range (so the range needs no condition of its own);
    what remains is a ``KroneckerDelta``."""
    arg = node.arg
    summed = [sp.Integer(0) if dim == 1 else printer._fresh_index() for dim in arg.shape]
    values: list[sp.Expr] = list(summed)
    open_axes = [a for a, dim in enumerate(arg.shape) if dim != 1]
    padded = _zero_outside(arg, printer)
    conditions: list[sp.Expr] = []
    for m, u, dim in zip(node.index, indices, node.dims, strict=True):
        position = sp.expand(m.at(values))
        pick = None
        for a in open_axes:
            coeff = position.coeff(summed[a])
            if coeff not in (1, -1):
                continue
            solved = sp.expand((u - (position - coeff * summed[a])) / coeff)
            if a in padded or (solved == u and arg.shape[a] == dim):
                pick = (a, solved)
                break
        if pick is None:
            conditions.append(sp.KroneckerDelta(u, position))
            continue
        a, solved = pick
        values = [sp.expand(v.xreplace({summed[a]: solved})) for v in values]
        conditions = [c.xreplace({summed[a]: solved}) for c in conditions]
        open_axes.remove(a)
    body = sp.Mul(*conditions) * printer.index(arg, tuple(values))
    limits = [(summed[a], 0, arg.shape[a] - 1) for a in open_axes]
    return sp.Sum(body, *limits) if limits else body


def _zero_outside(node: ir.Node, printer: SympyPrinter) -> set[int]:
    """The axes of ``node`` along which its printed entry is 0 at a position outside the
    axis's range: arrays read with zero padding, and products with such an array."""
    if isinstance(node, ir.Leaf) or id(node) in printer.aliases or (
            isinstance(node, ir.Named) and not printer._inlined(node)):
        return set(range(node.rank))
    if isinstance(node, ir.Named):
        return _zero_outside(node.body, printer)
    if isinstance(node, ir.Einsum):
        dims = node.label_dims()
        padded_labels = set()
        for op, spec in zip(node.operands, node.specs, strict=True):
            inner = _zero_outside(op, printer)
            padded_labels |= {lab for a, lab in enumerate(spec)
                              if a in inner and op.shape[a] == dims[lab]}
        return {a for a, lab in enumerate(node.out) if lab in padded_labels}
    if isinstance(node, ir.Add):
        return set.intersection(*[_zero_outside(t, printer) for t in node.terms])
    return set()


@INDEX.register(ir.Take)
def _index_take(node: ir.Take, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    # W[idx[b], j]: the row of the table that the index array names.
    rank = node.indices.rank
    row = printer.index(node.indices, tuple(indices[:rank]))
    return printer.index(node.table, (row,) + tuple(indices[rank:]))


@INDEX.register(ir.TakeAdjoint)
def _index_take_adjoint(node: ir.TakeAdjoint, printer: SympyPrinter,
                        indices: tuple) -> sp.Expr:
    # dW[v, j] = Σ_b [idx[b] = v] G[b, j]: the scatter-add of the rows.
    summed = tuple(sp.Integer(0) if dim == 1 else printer._fresh_index()
                   for dim in node.indices.shape)
    hit = sp.KroneckerDelta(printer.index(node.indices, summed), indices[0])
    body = hit * printer.index(node.arg, summed + tuple(indices[1:]))
    limits = [(s, 0, dim - 1) for s, dim in zip(summed, node.indices.shape, strict=True)
              if dim != 1]
    return sp.Sum(body, *limits) if limits else body


def _along(node: ir.Max | ir.ArgMaxMask, printer: SympyPrinter,
           indices: tuple) -> tuple[sp.Expr, tuple]:
    """The argument's entry with a fresh index along the reduced axis, and its limit."""
    m = printer._fresh_index()
    at = tuple(m if a == node.axis else i for a, i in enumerate(indices))
    return printer.index(node.arg, at), (m, 0, node.arg.shape[node.axis] - 1)


@INDEX.register(ir.Max)
def _index_max(node: ir.Max, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return MaxOver(*_along(node, printer, indices))


@INDEX.register(ir.ArgMaxMask)
def _index_argmax_mask(node: ir.ArgMaxMask, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    # [k = argmax_m X[b, m]]: 1 at the first maximum.
    return sp.KroneckerDelta(indices[node.axis], ArgMaxOver(*_along(node, printer, indices)))



# -- recurrences (``ir.Scan``) ------------------------------------------------------------


def _printed_part(node: ir.Node, printer: SympyPrinter) -> sp.Basic:
    """A scan's part (a step, a sequence it reads) as one SymPy object that translates back
    to the same node: its symbol, a matrix, a scalar, a printed scan, or an ``IndexedPart``
    (index notation with its indices and shape: nothing squeezed)."""
    if id(node) in printer.aliases:
        return printer.aliases[id(node)].symbol
    if isinstance(node, ir.Named):
        return _printed_part(node.body, printer) if printer._inlined(node) else node.symbol
    if isinstance(node, ir.Leaf):
        return node.symbol
    if isinstance(node, ir.Scan):
        return _printed_scan(node, printer)
    if node.rank == 0:
        return printer.scalar(node)
    if node.rank == 2:
        try:
            return printer.matrix(node)
        except _NoMatrixFormError:
            pass
    indices = tuple(printer._fresh_index() for _ in node.shape)
    return IndexedPart(printer.index(node, indices), sp.Tuple(*indices), sp.Tuple(*node.shape))


def _printed_scan(node: ir.Scan, printer: SympyPrinter) -> sp.Basic:
    bindings = sp.Tuple(*[
        sp.Tuple(slot.symbol, _printed_part(seq, printer), sp.Integer(lag),
                 sp.S.Zero if bound is None else _printed_part(bound, printer))
        for slot, seq, lag, bound in zip(node.slots, node.seqs, node.lags, node.bounds,
                                         strict=True)])
    return PrintedScan(sp.Symbol(node.mode), sp.Integer(int(node.reverse)),
                       sp.Tuple(*[c.symbol for c in node.carry]),
                       sp.Tuple(*[_printed_part(s, printer) for s in node.step]),
                       _printed_part(node.emit, printer), bindings, node.length,
                       sp.Tuple(*[_printed_part(i, printer) for i in node.init]))


@SCALAR.register(ir.Scan)
def _scalar_scan(node: ir.Scan, printer: SympyPrinter) -> sp.Expr:
    return _printed_scan(node, printer)


@MATRIX.register(ir.Scan)
def _matrix_scan(node: ir.Scan, printer: SympyPrinter) -> sp.Basic:
    raise _NoMatrixFormError(node)  # printed as a recurrence, entry by entry


@INDEX.register(ir.Scan)
def _index_scan(node: ir.Scan, printer: SympyPrinter, indices: tuple) -> sp.Expr:
    return ScanEntry(_printed_scan(node, printer), *indices)


def in_index_notation(expr: sp.Basic) -> sp.Basic | IndexForm:
    """``expr`` with its tensor forms (a convolution ``K ⋆ X``, a pooling, a flatten, their
    adjoints ``X ⋆ δ``, ``δ ⋆ᵀ K``) written out in index notation: sums of array entries at
    affine positions, what the form computes entry by entry. SymPy alone can evaluate that
    (``symdl.check``'s reference does); an expression without forms comes back as it is."""
    from symdl.define.tensor_ir import tensor
    from symdl.define.tensors import Flatten, TensorExpr
    from symdl.define.translate import (
        Translator,
        dimension_symbols,
        translate_matrix_or_scalar,
    )

    if not isinstance(expr, sp.Basic) or not any(
            isinstance(e, (TensorExpr, Flatten)) for e in sp.preorder_traversal(expr)):
        return expr
    translator = Translator(dimension_symbols([expr]))
    if isinstance(expr, TensorExpr):
        node = tensor(translator, expr)
    else:
        node = translate_matrix_or_scalar(translator, expr)
    return SympyPrinter(forms=False).result(node)
