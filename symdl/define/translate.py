"""Definition -> IR: plain SymPy (matrix or index notation) into the tensor IR of ``symdl.ir``.

Matrix expressions translate structurally (``X*W`` is an einsum ``ik,kj->ij``). Scalar
expressions with ``Sum``, ``Indexed`` and ``MatrixElement`` translate through their indices:
a product is an einsum over the indices of its factors, a ``Sum`` contracts its index, a
function of indexed terms is an elementwise ``Map``. Both meet in the same IR, so a loss may
mix them (``Total(M)``, ``Trace(A*X*B)``, ``Sum(w[i, 0]**2, (i, 0, d - 1))``).

An index may be affine in the index symbols, with integer coefficients and offsets
(``X[b, s*t + d*k - p]``: windows, strides, dilations, padding, fixed entries): the array is
read at computed positions, and **an entry outside the array reads as 0** (zero padding).
A ``Sum`` from a lower limit other than 0 is shifted to start at 0 (its positions become
offsets), and a ``Sum`` over fewer values than an axis it indexes reads the first entries.
An entry of an integer index array (``W[idx[b], j]``, ``idx`` an ``IndexedBase`` declared
``integer=True``) gathers rows. See ``symdl.define.positions``.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symdl import ir
from symdl.define import tensor_ir
from symdl.define.positions import affine_parts, index_array, index_symbols
from symdl.define.recurrence import IndexedPart, PrintedScan, Recurrence, ScanEntry
from symdl.define.reductions import LogSumExpAlong, SoftmaxAlong
from symdl.define.tensors import Flatten, TensorExpr
from symdl.define.vocabulary import (
    Det,
    LogDet,
    LogSumExp,
    Norm,
    PseudoInverse,
    Softmax,
    Spectrum,
    Total,
)
from symdl.errors import DefinitionError, ShapeMismatchError, UnsupportedError
from symdl.ir.rewrites import stabilize_one
from symdl.primitives.functions import lower_kinks
from symdl.primitives.registry import check_supported


def dimension_symbols(exprs: list[sp.Basic]) -> set[sp.Symbol]:
    """The symbols that appear in the shapes of the matrices and arrays of ``exprs``."""
    dims: set[sp.Symbol] = set()
    for e in exprs:
        for m in e.atoms(sp.MatrixSymbol):
            for d in m.shape:
                dims |= sp.sympify(d).free_symbols
        for b in e.atoms(sp.IndexedBase):
            if b.shape is not None:
                for d in b.shape:
                    dims |= sp.sympify(d).free_symbols
        for idx in e.atoms(sp.Idx):
            if idx.upper is not None:
                dims |= (sp.sympify(idx.upper) + 1).free_symbols
    return dims


class Translator:
    """Translates SymPy expressions into IR nodes, sharing leaves and named intermediates.

    Args:
        dims: symbols that are dimensions (constants, never differentiated).
        named: SymPy symbols standing for named intermediates, mapped to their IR nodes.
    """

    def __init__(self, dims: set[sp.Symbol], named: dict[sp.Basic, ir.Node] | None = None):
        self.dims = set(dims)
        self.named = dict(named or {})
        self.leaves: dict[str, ir.Leaf] = {}
        self._labels: dict[sp.Symbol, int] = {}
        self.index_dims: dict[sp.Symbol, sp.Expr] = {}
        """The range of each index symbol seen in a Sum (or given by the caller)."""
        self.preferred_order: tuple[sp.Symbol, ...] = ()
        """Free indices in this order where terms of a sum or arguments of a function meet
        (the left side's order, in a step ``Q[b, s, e] = ...``): ``M[s, t] + S[b, s, t]``
        then needs no transpose, and a softmax of it is the step's own."""

    # -- leaves ---------------------------------------------------------------------------

    def leaf(self, symbol: sp.Basic, name: str, shape: tuple) -> ir.Node:
        if symbol in self.named:
            return self.named[symbol]
        shape = tuple(sp.sympify(s) for s in shape)
        step = self.step_named(name)
        if step is not None:
            # The same name written as another kind of symbol (the step Hm[b, j] read as
            # MatrixSymbol("Hm", n, d), a step Symbol("L") read with other assumptions):
            # one name is one array, so it is the step's value, never a second input.
            if len(step.shape) != len(shape) or any(
                    sp.simplify(a - b) != 0 for a, b in zip(step.shape, shape, strict=True)):
                raise ShapeMismatchError(
                    f"{name} is a named step of shape {tuple(step.shape)} but is read here "
                    f"as {type(symbol).__name__} of shape {shape}; read it with the step's "
                    "shape (or give the input another name)", tuple(step.shape), shape)
            return step
        known = self.leaves.get(name)
        if known is not None:
            if known.shape != shape:
                raise ShapeMismatchError(
                    f"{name} is used with two shapes, {known.shape} and {shape}; give each "
                    "array one shape (or two different names)", known.shape, shape,
                )
            return known
        node = ir.leaf(name, shape, symbol)
        self.leaves[name] = node
        return node

    def step_named(self, name: str) -> ir.Node | None:
        """The named intermediate called ``name``, whatever symbol defined it, or None."""
        for node in self.named.values():
            if isinstance(node, ir.Named) and node.name == name:
                return node
        return None

    def _label(self, index: sp.Symbol) -> int:
        if index not in self._labels:
            self._labels[index] = len(self._labels)
        return self._labels[index]

    # -- matrices -------------------------------------------------------------------------

    def matrix(self, e: MatrixExpr) -> ir.Node:
        """Translates a matrix expression into a rank-2 node."""
        if isinstance(e, sp.MatrixSymbol):
            return self.leaf(e, str(e.name), e.shape)
        if isinstance(e, sp.MatMul):
            return self._matmul(e)
        if isinstance(e, sp.MatAdd):
            terms = [self.matrix(a) if isinstance(a, MatrixExpr) else None for a in e.args]
            if any(t is None for t in terms):
                raise DefinitionError(f"cannot add a scalar to a matrix in {e}")
            return ir.add(*terms)
        if isinstance(e, sp.Transpose):
            return ir.einsum([self.matrix(e.arg)], [(0, 1)], (1, 0))
        if isinstance(e, sp.HadamardProduct):
            return ir.hadamard(*[self.matrix(a) for a in e.args])
        if isinstance(e, sp.HadamardPower):
            x = sp.Dummy("x")
            exponent = self._constant(e.exp, "the exponent of a Hadamard power")
            return ir.map_(sp.Lambda(x, x**exponent), self.matrix(e.base))
        if isinstance(e, ElementwiseApplyFunction):
            fn = e.function
            if not isinstance(fn, sp.Lambda):
                x = sp.Dummy("x")
                fn = sp.Lambda(x, fn(x))
            check_supported(fn.expr)
            fn = sp.Lambda(fn.variables, lower_kinks(fn.expr, self._is_constant))
            return self._applyfunc(fn, self.matrix(e.expr))
        if isinstance(e, sp.OneMatrix):
            return ir.ones(e.shape)
        if isinstance(e, sp.ZeroMatrix):
            return ir.zero(e.shape)
        if isinstance(e, sp.Identity):
            return ir.identity(e.rows)
        if isinstance(e, sp.MatPow):
            power = e.exp
            if power == -1:  # sp.Inverse is a MatPow too
                return ir.solve(self.matrix(e.base), ir.identity(e.base.shape[0]))
            if tuple(e.base.shape) == (1, 1):
                return self._entry_power(e.base, power)
            if not (power.is_Integer and power >= 1):
                raise UnsupportedError(
                    f"matrix power {e} with exponent {power}: only positive integer powers and "
                    "the inverse (power -1) are supported"
                )
            return self._matmul(sp.MatMul(*([e.base] * int(power)), evaluate=False))
        if isinstance(e, Softmax):
            return ir.softmax(self.matrix(e.arg), e.axis)
        if isinstance(e, LogSumExp):
            return ir.logsumexp(self.matrix(e.arg), e.axis)
        if isinstance(e, PseudoInverse):
            # (A^T A)^{-1} A^T or A^T (A A^T)^{-1} = ((A A^T)^{-1} A)^T: one Cholesky solve
            # with the Gram matrix, symmetric positive definite when A has full rank.
            m = self.matrix(e.arg)
            gram = self.matrix(e.gram())
            if e.full_rank == "columns":
                return ir.solve(gram, ir.einsum([m], [(0, 1)], (1, 0)), spd=True)
            return ir.einsum([ir.solve(gram, m, spd=True)], [(0, 1)], (1, 0))
        if isinstance(e, Spectrum):
            return ir.matrix_function(self.matrix(e.arg), e.part)
        if isinstance(e, DiagMatrix):
            v = self.matrix(e.args[0])
            rows, cols = v.shape
            spec = (0, 2) if cols == 1 else (2, 0)
            return ir.einsum([v, ir.identity(e.shape[0])], [spec, (0, 1)], (0, 1))
        if isinstance(e, Flatten):
            return tensor_ir.flatten(self, e)
        if isinstance(e, sp.MatrixBase):
            raise UnsupportedError(
                "explicit matrices (sympy.Matrix) are unrolled per entry and do not scale; use "
                "a MatrixSymbol with symbolic dimensions instead"
            )
        raise UnsupportedError(
            f"matrix expression of type {type(e).__name__} ({e}) is not supported; supported: "
            "MatrixSymbol, products, sums, transposes, Hadamard products and powers, applyfunc, "
            "OneMatrix, Identity, softmax, logsumexp"
        )

    def _applyfunc(self, fn: sp.Lambda, arg: ir.Node) -> ir.Node:
        """``fn`` entry by entry; scalar symbols the body closes over (``delta`` in a Huber
        written ``lambda t: Piecewise(..., (Abs(t) <= delta))``) become map arguments, so
        they have values in kernels and derivatives (they were constants, with derivative 0)."""
        closed = sorted(fn.expr.free_symbols - set(fn.variables) - self.dims, key=str)
        if not closed:
            return ir.map_(fn, arg)
        dummies = [sp.Dummy(f"c{k}", real=True) for k in range(len(closed))]
        body = fn.expr.xreplace(dict(zip(closed, dummies, strict=True)))
        labels = tuple(range(arg.rank))
        sizes = dict(zip(labels, arg.shape, strict=True))
        scalars = [ir.broadcast(self.scalar(c), (), labels, sizes) for c in closed]
        return ir.map_(sp.Lambda((*fn.variables, *dummies), body), arg, *scalars)

    def _entry_power(self, base: MatrixExpr, power: sp.Expr) -> ir.Node:
        """A power of a 1 x 1 matrix: the power of its entry. SymPy writes ``applyfunc(f)`` of
        a 1 x 1 matrix as ``f(M)`` when that is a matrix (``sqrt`` gives ``M**(1/2)``), so an
        elementwise rule written for any shape reaches here for a bias of one output."""
        node = self.matrix(base)
        x = sp.Dummy("x")
        if not (power.free_symbols - self.dims) and not _has_arrays(power):
            return ir.map_(sp.Lambda(x, x**power), node)
        y = sp.Dummy("y")
        exponent = ir.broadcast(self.scalar(power), (), (0, 1), {0: sp.Integer(1),
                                                                  1: sp.Integer(1)})
        return ir.map_(sp.Lambda((x, y), x**y), node, exponent)

    def _matmul(self, e: sp.MatMul) -> ir.Node:
        scalars = [a for a in e.args if not isinstance(a, MatrixExpr)]
        mats = [a for a in e.args if isinstance(a, MatrixExpr)]
        for left, right in zip(mats, mats[1:], strict=False):
            if left.shape[1] != right.shape[0]:
                raise ShapeMismatchError(
                    f"matrix product {left} * {right}: shapes {left.shape[0]} x "
                    f"{left.shape[1]} and {right.shape[0]} x {right.shape[1]} do not chain "
                    f"({left.shape[1]} != {right.shape[0]})", left.shape, right.shape,
                )
        nodes = self._solved_chain(mats)
        operands = [self.scalar(s) for s in scalars]
        specs: list[tuple[int, ...]] = [() for _ in scalars]
        for k, node in enumerate(nodes):
            operands.append(node)
            specs.append((k, k + 1))
        return ir.einsum(operands, specs, (0, len(nodes)))

    def _solved_chain(self, mats: list[MatrixExpr]) -> list[ir.Node]:
        """The factors of a product; ``A^{-1} B C`` becomes one linear solve ``A^{-1} (B C)``,
        never the inverse itself, unless the inverse ends the product."""
        for k, m in enumerate(mats):
            if isinstance(m, sp.MatPow) and m.exp == -1 and k + 1 < len(mats):
                rest = self._solved_chain(mats[k + 1:])
                specs = [(j, j + 1) for j in range(len(rest))]
                right = ir.einsum(rest, specs, (0, len(rest)))
                solved = ir.solve(self.matrix(m.base), right)
                return [self.matrix(a) for a in mats[:k]] + [solved]
        return [self.matrix(m) for m in mats]

    def _constant(self, value: sp.Expr, what: str) -> sp.Expr:
        value = sp.sympify(value)
        if value.free_symbols - self.dims:
            raise UnsupportedError(
                f"{what} must be a constant (numbers and dimensions only), got {value}"
            )
        return value

    # -- scalars and index notation -----------------------------------------------------

    def scalar(self, e: sp.Basic) -> ir.Node:
        """Translates a scalar expression (it may contain index notation) into a rank-0 node."""
        node, indices = self.indexed(sp.sympify(e))
        if indices:
            raise DefinitionError(
                f"the expression {e} has free indices {indices}: sum over them (Sum) or ask "
                "for an indexed result"
            )
        return node

    def indexed(self, e: sp.Basic) -> tuple[ir.Node, tuple[sp.Symbol, ...]]:
        """Translates ``e`` into a node whose axes are the returned free index symbols."""
        if isinstance(e, MatrixExpr):
            raise DefinitionError(
                f"a matrix {e} ({e.shape[0]} x {e.shape[1]}) stands where a scalar is expected; "
                "take an entry, a trace or symdl.sum of it"
            )
        if e.is_Number or not (e.free_symbols - self.dims) and not _has_arrays(e):
            if e.has(sp.zoo, sp.nan, sp.oo):
                raise DefinitionError(f"the constant {e} is not finite")
            return ir.scalar(e), ()
        if isinstance(e, sp.Symbol):
            return self.leaf(e, str(e.name), ()), ()
        if isinstance(e, sp.Indexed):
            return self._indexed_array(e)
        if isinstance(e, (PrintedScan, ScanEntry)):
            return translate_printed_entry(self, e)
        if isinstance(e, MatrixElement):
            return self._matrix_element(e)
        if isinstance(e, sp.Mul):
            return self._product(e.args)
        if isinstance(e, sp.Add):
            return self._sum_of_terms(e.args)
        if isinstance(e, sp.Pow):
            base, power = e.args
            x = sp.Dummy("x")
            if not (power.free_symbols - self.dims) and not _has_arrays(power):
                return self._elementwise(sp.Lambda(x, x**power), [base])
            y = sp.Dummy("y")
            return self._elementwise(sp.Lambda((x, y), x**y), [base, power])
        if isinstance(e, sp.Sum):
            return self._sum(e)
        if getattr(e, "reduction", None) == "max":
            return self._max_over(e)
        if isinstance(e, sp.KroneckerDelta):
            i, j = e.args
            for u, at in ((i, j), (j, i)):
                if getattr(at, "reduction", None) == "argmax":
                    return self._argmax_at(u, at)
            if not all(isinstance(a, (sp.Symbol, sp.Idx)) and a not in self.dims
                       for a in (i, j)):
                return self._delta_at(e)
            node = self._delta(i, j)
            return node, (i, j)
        if isinstance(e, sp.Trace):
            return ir.einsum([self.matrix(e.arg)], [(0, 0)], ()), ()
        if isinstance(e, Total):
            return ir.einsum([self.matrix(e.arg)], [(0, 1)], ()), ()
        if isinstance(e, (SoftmaxAlong, LogSumExpAlong)):
            return self._along(e)
        determinant = self._determinant(e)
        if determinant is not None:
            return determinant, ()
        if isinstance(e, Norm):
            return ir.matrix_function(self.matrix(e.arg), e.part), ()
        if isinstance(e, (sp.Max, sp.Min, sp.Piecewise)):
            return self._kink(e)
        if isinstance(e, sp.Function):
            check_supported(e)
            # Constant arguments (Heaviside's value at 0) stay in the body as numbers.
            varying = [a for a in e.args if not a.is_number]
            xs = {a: sp.Dummy(f"x{k}") for k, a in enumerate(varying)}
            body = e.func(*[xs.get(a, a) for a in e.args])
            return self._elementwise(sp.Lambda(tuple(xs.values()), body), varying)
        raise UnsupportedError(f"{type(e).__name__} ({e}) is not supported in a definition")

    def _determinant(self, e: sp.Basic) -> ir.Node | None:
        """``det A`` (``sympy.Determinant``, ``symdl.det``) or ``log |det A|`` (its log, the log
        of its absolute value, ``symdl.logdet``) as one node; None for anything else."""
        if isinstance(e, (Det, LogDet)):
            return ir.det(self.matrix(e.arg), log=isinstance(e, LogDet), spd=e.spd)
        if isinstance(e, sp.Determinant):
            return ir.det(self.matrix(e.arg))
        if isinstance(e, sp.log):
            inner = e.args[0].args[0] if isinstance(e.args[0], sp.Abs) else e.args[0]
            if isinstance(inner, (Det, sp.Determinant)):
                node = self._determinant(inner)
                return ir.det(node.a, log=True, spd=node.spd)
        return None

    def _along(self, e: SoftmaxAlong | LogSumExpAlong) -> tuple[ir.Node, tuple]:
        """Softmax or log-sum-exp along the axis of ``e.index``: the stable IR node."""
        node, indices = self.indexed(e.expr)
        if e.index not in indices:
            raise DefinitionError(f"{e}: {e.index} is not a free index of {e.expr}")
        axis = indices.index(e.index)
        if isinstance(e, SoftmaxAlong):
            return ir.softmax(node, axis), indices
        labels = tuple(range(node.rank))
        kept = labels[:axis] + labels[axis + 1:]
        reduced = ir.einsum([ir.logsumexp(node, axis)], [labels], kept)  # the size-1 axis goes
        return reduced, indices[:axis] + indices[axis + 1:]

    def _is_constant(self, e: sp.Basic) -> bool:
        e = sp.sympify(e)
        return not (e.free_symbols - self.dims) and not _has_arrays(e)

    def _kink(self, e: sp.Basic) -> tuple[ir.Node, tuple]:
        """``Max``, ``Min`` or ``Piecewise`` (possibly nested in each other and in other
        functions) as one elementwise map of its array-valued parts: each ``Sum``, array entry
        or scalar symbol in it becomes an argument, the rest is the map's scalar body."""
        check_supported(e)
        operands: dict[sp.Basic, sp.Dummy] = {}

        def operand(sub: sp.Basic) -> sp.Dummy:
            if sub not in operands:
                operands[sub] = sp.Dummy(f"x{len(operands)}", real=True)
            return operands[sub]

        def cut(sub: sp.Basic) -> sp.Basic:
            if isinstance(sub, sp.Expr) and self._is_constant(sub):
                # Numbers stay in the body; dimensions are values the map reads.
                return sub if sub.is_number else operand(sub)
            if isinstance(sub, (sp.Symbol, sp.Indexed, MatrixElement, sp.Sum, sp.Trace, Total,
                                sp.KroneckerDelta, Norm)):
                return operand(sub)
            if isinstance(sub, MatrixExpr):
                self.indexed(sub)  # raises: a matrix where a scalar belongs
            if not sub.args:
                return sub
            return sub.func(*[cut(a) for a in sub.args])

        body = cut(lower_kinks(e, self._is_constant))
        if not operands:
            return ir.scalar(body), ()
        return self._elementwise(sp.Lambda(tuple(operands.values()), body), list(operands))

    def _indexed_array(self, e: sp.Indexed) -> tuple[ir.Node, tuple[sp.Symbol, ...]]:
        base = e.base
        shape = base.shape
        if shape is None:
            dims = []
            for index in e.indices:
                if not (isinstance(index, sp.Idx) and index.upper is not None):
                    raise DefinitionError(
                        f"the shape of {base} is unknown: give IndexedBase a shape "
                        f"(IndexedBase('{base}', shape=(n, d))) or use Idx with a range"
                    )
                dims.append(index.upper - index.lower + 1)
            shape = tuple(dims)
        if len(shape) != len(e.indices):
            raise ShapeMismatchError(
                f"{e} has {len(e.indices)} indices but {base} has shape {tuple(shape)}",
                tuple(shape), e.indices,
            )
        node = self.leaf(base, str(base.label), shape)
        return self._at(node, tuple(e.indices), e)

    def _matrix_element(self, e: MatrixElement) -> tuple[ir.Node, tuple[sp.Symbol, ...]]:
        parent = e.parent
        node = self.matrix(parent) if isinstance(parent, MatrixExpr) else None
        if node is None:
            raise UnsupportedError(f"entry of {parent} of type {type(parent).__name__}")
        return self._at(node, (e.i, e.j), e)

    def _with_indices(self, node: ir.Node, indices: tuple) -> tuple[ir.Node, tuple]:
        """``node`` with its axes named by ``indices`` (None: a size-1 axis, dropped)."""
        spec = []
        drop = 1_000_000
        for index in indices:
            if index is None:
                spec.append(drop)
                drop += 1
            else:
                spec.append(self._label(index))
        kept: list[sp.Symbol] = []
        for index in indices:
            if index is not None and index not in kept:
                kept.append(index)
        out = tuple(self._label(i) for i in kept)
        if tuple(spec) == out:
            return node, tuple(kept)
        return ir.einsum([node], [tuple(spec)], out), tuple(kept)

    def _delta(self, i: sp.Basic, j: sp.Basic) -> ir.Node:
        dims = [idx.upper - idx.lower + 1 for idx in (i, j) if isinstance(idx, sp.Idx)
                and idx.upper is not None]
        dims += [self.index_dims[idx] for idx in (i, j) if idx in self.index_dims]
        if not dims:
            raise DefinitionError(
                f"KroneckerDelta({i}, {j}): the range of its indices is unknown; use Idx "
                "indices with ranges, or indices that a Sum runs over"
            )
        return ir.identity(dims[0])

    def _product(self, factors) -> tuple[ir.Node, tuple]:
        operands, specs, order = [], [], []
        for f in factors:
            node, indices = self.indexed(f)
            operands.append(node)
            specs.append(tuple(self._label(i) for i in indices))
            order.extend(i for i in indices if i not in order)
        out = tuple(self._label(i) for i in order)
        return ir.einsum(operands, specs, out), tuple(order)

    def _sum_of_terms(self, terms) -> tuple[ir.Node, tuple]:
        parts = [self.indexed(t) for t in terms]
        order: list[sp.Symbol] = []
        for _, indices in parts:
            order.extend(i for i in indices if i not in order)
        return self._broadcast_all(parts, order, ir.add)

    def _broadcast_all(self, parts, order, combine) -> tuple[ir.Node, tuple]:
        if self.preferred_order:
            rank = {i: k for k, i in enumerate(self.preferred_order)}
            order = sorted(order, key=lambda i: (rank.get(i, len(rank)), order.index(i)))
        out = tuple(self._label(i) for i in order)
        dims: dict[int, sp.Expr] = {}
        for node, indices in parts:
            for i, d in zip(indices, node.shape, strict=False):
                dims[self._label(i)] = d
        missing = [i for i in order if self._label(i) not in dims]
        if missing:
            raise DefinitionError(f"cannot tell the range of the indices {missing}")
        nodes = [
            ir.broadcast(node, tuple(self._label(i) for i in indices), out, dims)
            for node, indices in parts
        ]
        return combine(*nodes), tuple(order)

    def _elementwise(self, fn: sp.Lambda, args) -> tuple[ir.Node, tuple]:
        parts = [self.indexed(a) for a in args]
        order: list[sp.Symbol] = []
        for _, indices in parts:
            order.extend(i for i in indices if i not in order)
        return self._broadcast_all(parts, order, lambda *nodes: ir.map_(fn, *nodes))

    def _sum(self, e: sp.Sum) -> tuple[ir.Node, tuple]:
        e = self._from_zero(e)
        for index, lower, upper in e.limits:
            self.index_dims[index] = upper - lower + 1
        node, indices = self.indexed(e.function)
        factor = sp.Integer(1)
        for index, lower, upper in e.limits:
            if lower != 0:
                raise UnsupportedError(
                    f"Sum over {index} from {lower}: symdl sums run from 0 to a dimension minus "
                    "one; shift the index"
                )
            length = upper + 1
            if index not in indices:
                factor *= length
                continue
            axis = indices.index(index)
            if sp.simplify(node.shape[axis] - length) != 0:
                raise ShapeMismatchError(
                    f"Sum over {index} runs to {upper} but the arrays it indexes have dimension "
                    f"{node.shape[axis]}", (length,), (node.shape[axis],),
                )
            labels = tuple(self._label(i) for i in indices)
            indices = tuple(i for i in indices if i != index)
            node = ir.einsum([node], [labels], tuple(self._label(i) for i in indices))
        if factor != 1:
            node = ir.scale(node, factor)
        return node, indices

    # -- maxima over an index (printed results: symdl.printing.reductions) ---------------

    def _reduced(self, e: sp.Basic) -> tuple[ir.Node, tuple, list]:
        """The function of ``max_m f`` or ``argmax_m f`` (each ``m`` from 0), its indices,
        and the reduced indices ``m`` (a max over a window has several)."""
        for m, lower, upper in e.limits:
            if lower != 0 or not self._is_constant(upper):
                raise UnsupportedError(
                    f"{e}: a maximum over an index runs from 0 to a dimension minus one")
            self.index_dims[m] = upper + 1
        node, indices = self.indexed(e.function)
        reduced = [m for m, _, _ in e.limits]
        for m in reduced:
            if m not in indices:
                raise UnsupportedError(f"{e}: the maximised expression does not depend on {m}")
        return node, indices, reduced

    def _max_over(self, e: sp.Basic) -> tuple[ir.Node, tuple]:
        """``max_{m} f``: the maximum along the axis of each ``m``, which then goes away."""
        node, indices, reduced = self._reduced(e)
        for m in reduced:
            labels = tuple(self._label(i) for i in indices)
            node = ir.max_along(node, indices.index(m))  # keeps the axis, of size 1
            indices = tuple(i for i in indices if i != m)
            node = ir.einsum([node], [labels], tuple(self._label(i) for i in indices))
        return node, indices

    def _argmax_at(self, u: sp.Basic, e: sp.Basic) -> tuple[ir.Node, tuple]:
        """``[u = argmax_m f]``: the mask of the first maximum, whose axis ``m`` is ``u``."""
        node, indices, reduced = self._reduced(e)
        if len(reduced) != 1:
            raise UnsupportedError(f"KroneckerDelta({u}, {e}): an arg max is over one index")
        axis = indices.index(reduced[0])
        if not isinstance(u, (sp.Symbol, sp.Idx)) or u in self.dims or u in indices:
            raise UnsupportedError(
                f"KroneckerDelta({u}, {e}): the other side of an arg max must be a plain index "
                "symbol that the maximised expression does not use")
        self.index_dims.setdefault(u, node.shape[axis])
        return ir.argmax_mask(node, axis), tuple(u if k == axis else i
                                                 for k, i in enumerate(indices))

    # -- computed positions (symdl.define.positions) -------------------------------------

    def _from_zero(self, e: sp.Sum) -> sp.Sum:
        """``e`` with every index running from 0: ``Sum(f(t), (t, 1, T))`` is
        ``Sum(f(t' + 1), (t', 0, T - 1))``, whose positions are affine offsets."""
        shift: dict[sp.Basic, sp.Expr] = {}
        limits = []
        for index, lower, upper in e.limits:
            if lower == 0:
                limits.append((index, lower, upper))
                continue
            if not self._is_constant(lower):
                raise UnsupportedError(
                    f"Sum over {index} from {lower} to {upper}: the lower limit of a Sum must be "
                    "a number or a dimension (a sum whose range depends on another index is "
                    "not supported)")
            shifted = sp.Dummy(str(index), integer=True)
            shift[index] = shifted + lower
            limits.append((shifted, 0, upper - lower))
        if not shift:
            return e
        return sp.Sum(e.function.xreplace(shift), *limits)

    def _at(self, node: ir.Node, indices: tuple, where: sp.Basic) -> tuple[ir.Node, tuple]:
        """The entry of ``node`` at ``indices``: plain index symbols name its axes; an affine
        index reads it at computed positions (zero outside); an integer index array entry
        gathers along its axis."""
        arrays = [a for a, index in enumerate(indices) if index_array(index, where) is not None]
        if len(arrays) > 1:
            raise UnsupportedError(
                f"{where} is indexed by {len(arrays)} index arrays; an array may be indexed by "
                "one integer index array (W[idx[b], j]); gather in two steps")
        if arrays:
            return self._gather(node, indices, arrays[0], where)
        shape = node.shape
        plain: list[sp.Basic | None] = []
        for index, dim in zip(indices, shape, strict=True):
            if isinstance(index, (sp.Symbol, sp.Idx)) and index not in self.dims:
                if index in self.index_dims and _shorter(self.index_dims[index], dim):
                    break  # a Sum over the first entries only: a read
                plain.append(index)
            elif index.is_Integer and index == 0 and dim == 1:
                plain.append(None)  # the single entry of a size-1 axis: the axis is dropped
            else:
                break
        else:
            return self._with_indices(node, tuple(plain))
        return self._affine_read(node, indices, where)

    def _affine_read(self, node: ir.Node, indices: tuple,
                     where: sp.Basic) -> tuple[ir.Node, tuple]:
        parts = [affine_parts(sp.sympify(index), self.dims, where) for index in indices]
        symbols: list[sp.Basic] = []
        for index in indices:
            symbols.extend(s for s in index_symbols(sp.sympify(index), self.dims)
                           if s not in symbols)
        ranges = {index: dim for index, dim in zip(indices, node.shape, strict=True)
                  if isinstance(index, (sp.Symbol, sp.Idx)) and index not in self.dims}
        dims = []
        for s in symbols:
            if s in self.index_dims:
                if s in ranges and not (_shorter(self.index_dims[s], ranges[s])
                                        or sp.simplify(self.index_dims[s] - ranges[s]) == 0):
                    raise ShapeMismatchError(
                        f"the Sum over {s} runs over {self.index_dims[s]} values but indexes "
                        f"{where} along an axis of dimension {ranges[s]}",
                        (self.index_dims[s],), (ranges[s],))
                dims.append(self.index_dims[s])
            elif s in ranges:
                dims.append(ranges[s])
            elif isinstance(s, sp.Idx) and s.upper is not None:
                dims.append(s.upper - s.lower + 1)
            else:
                raise DefinitionError(
                    f"the range of the index {s} in {where} is unknown: sum over it (Sum), "
                    "use it as a plain index of an array elsewhere in this entry, or use an Idx "
                    "with a range")
        maps = tuple(ir.AffineMap.of([coeffs.get(s, 0) for s in symbols], offset)
                     for coeffs, offset in parts)
        return ir.affine_read(node, dims, maps), tuple(symbols)

    def _delta_at(self, e: sp.KroneckerDelta) -> tuple[ir.Node, tuple]:
        """``[u = a]`` for a plain index ``u`` and an affine index ``a`` (``[u = 2 t + k]``,
        the condition of a transposed convolution): the identity over ``u``'s range read at
        ``(u, a)``, which is 0 wherever ``a`` falls outside that range."""
        plain = [a for a in e.args if isinstance(a, (sp.Symbol, sp.Idx)) and a not in self.dims]
        ranges = [self.index_dims[a] if a in self.index_dims
                  else a.upper - a.lower + 1 if isinstance(a, sp.Idx) and a.upper is not None
                  else None for a in plain]
        known = [r for r in ranges if r is not None]
        if not known:
            raise UnsupportedError(
                f"{e}: a KroneckerDelta of computed positions needs one plain index symbol whose "
                "range is known (a Sum over it, or an Idx with a range), as in "
                "KroneckerDelta(u, 2*t + k)")
        arrays = [a for a in e.args if isinstance(a, sp.Indexed)]
        if len(plain) == 1 and len(arrays) == 1 and not arrays[0].atoms(sp.Indexed) - {
                arrays[0]} and isinstance(arrays[0].base, sp.IndexedBase):
            # [u = idx[b]] (a scatter-add's condition, printed from an index array that
            # symdl.embedding took undeclared): the rows of the identity that the array picks,
            # (b, u); its entries are checked to be integers in range when evaluated.
            rows, row_indices = self.indexed(arrays[0])
            return ir.take(ir.identity(known[0]), rows), tuple(row_indices) + (plain[0],)
        return self._affine_read(ir.identity(known[0]), tuple(e.args), e)

    def _gather(self, node: ir.Node, indices: tuple, axis: int,
                where: sp.Basic) -> tuple[ir.Node, tuple]:
        """``node`` with its axis ``axis`` indexed by an integer index array entry
        (``W[idx[b], j]``): the rows picked by the array, then the other indices."""
        if axis != 0:
            order = (axis,) + tuple(a for a in range(node.rank) if a != axis)
            node = ir.einsum([node], [tuple(range(node.rank))], order)
        rows, row_indices = self.indexed(indices[axis])
        rest = tuple(index for a, index in enumerate(indices) if a != axis)
        return self._at(ir.take(node, rows), tuple(row_indices) + rest, where)


def _shorter(length: sp.Expr, dim: sp.Expr) -> bool:
    """Whether ``length < dim`` for every value of the dimensions (``T - 1 < T``)."""
    return bool((sp.sympify(dim) - length).is_positive)


def _has_arrays(e: sp.Basic) -> bool:
    return bool(e.atoms(sp.Indexed, MatrixElement, sp.MatrixSymbol))


def translate_matrix_or_scalar(translator: Translator, e: sp.Basic) -> ir.Node:
    """Translates a definition that is either a matrix expression or a scalar, in stable form
    (``symdl.ir.rewrites``: every spelling of a softplus, a softmax or a log-sum-exp)."""
    if isinstance(e, MatrixExpr):
        return stabilize_one(translator.matrix(e))
    if isinstance(e, TensorExpr):
        return stabilize_one(tensor_ir.tensor(translator, e))

    if isinstance(e, Recurrence):
        return translate_recurrence(translator, e)
    return stabilize_one(translator.scalar(e))


def translate_recurrence(translator: Translator, e: Recurrence) -> ir.Node:
    """``symdl.scan``'s ``Recurrence`` as an ``ir.Scan``: the step is translated over
    placeholder leaves that stay inside the scan (they are no inputs of the definition)."""
    placeholders = [c.name for c in e.carries] + [e.slot.name]
    for placeholder in placeholders:
        if placeholder in translator.leaves:
            raise DefinitionError(
                f"{placeholder} names the placeholder of a scan's step and also an input; "
                "rename the input or pass scan(..., name=...)")
    carries = tuple(translator.leaf(c, c.name, c.shape) for c in e.carries)
    slot = translator.leaf(e.slot, e.slot.name, e.slot.shape)
    steps = tuple(stabilize_one(translator.matrix(s)) for s in e.steps)
    for placeholder in placeholders:
        translator.leaves.pop(placeholder, None)
    inits = tuple(translator.matrix(i) for i in e.inits)
    xs = translator.leaf(e.xs, str(e.xs.label), tuple(e.xs.shape))
    return ir.scan(carry=carries, init=inits, step=steps, slots=(slot,), seqs=(xs,),
                   emit=steps[0], length=e.length)


def translate_printed_entry(translator: Translator, e: PrintedScan | ScanEntry
                            ) -> tuple[ir.Node, tuple]:
    """An entry of a printed recurrence (a derived result read back), in index notation."""
    if isinstance(e, PrintedScan):
        return translate_printed_scan(translator, e), ()
    node = translate_printed_scan(translator, e.args[0])
    return translator._with_indices(node, tuple(e.args[1:]))


def _printed_part(translator: Translator, part: sp.Basic) -> ir.Node:
    if isinstance(part, PrintedScan):
        return translate_printed_scan(translator, part)
    if isinstance(part, IndexedPart):
        expr, indices, shape = part.args
        translator.index_dims.update(zip(indices, shape, strict=True))
        node, found = translator.indexed(expr)
        labels = {i: k for k, i in enumerate(found)}
        missing = [i for i in indices if i not in labels]
        operands, specs = [node], [tuple(range(len(found)))]
        if missing:
            for i in missing:
                labels[i] = len(labels)
            operands.append(ir.ones(tuple(shape[tuple(indices).index(i)] for i in missing)))
            specs.append(tuple(labels[i] for i in missing))
        return ir.einsum(operands, specs, tuple(labels[i] for i in indices))
    if isinstance(part, sp.IndexedBase):
        return translator.leaf(part, str(part.label), tuple(part.shape))
    if isinstance(part, MatrixExpr):
        return translator.matrix(part)
    return translator.scalar(part)


def _placeholder_leaf(translator: Translator, symbol: sp.Basic) -> ir.Node:
    if isinstance(symbol, sp.IndexedBase):
        return translator.leaf(symbol, str(symbol.label), tuple(symbol.shape))
    if isinstance(symbol, sp.MatrixSymbol):
        return translator.leaf(symbol, symbol.name, tuple(symbol.shape))
    return translator.leaf(symbol, str(symbol), ())


def translate_printed_scan(translator: Translator, e: PrintedScan) -> ir.Node:
    """A printed recurrence (``PrintedScan``, what a derived result holds) as an ``ir.Scan``:
    the parts outside the loop first, then the step over its placeholders, which are no
    inputs (they are dropped from the translator's leaves afterwards)."""
    mode, reverse, carries, steps, emit, bindings, length, inits = e.args
    saved_dims = dict(translator.index_dims)
    inits_n = tuple(_printed_part(translator, i) for i in inits)
    seqs = tuple(_printed_part(translator, seq) for _, seq, _, _ in bindings)
    bounds = tuple(None if lag == 0 else _printed_part(translator, bound)
                   for _, _, lag, bound in bindings)
    before = set(translator.leaves)
    carry_n = tuple(_placeholder_leaf(translator, c) for c in carries)
    slots = tuple(_placeholder_leaf(translator, slot) for slot, _, _, _ in bindings)
    steps_n = tuple(_printed_part(translator, s) for s in steps)
    emit_n = _printed_part(translator, emit)
    for name in {leaf.name for leaf in carry_n + slots} - before:
        translator.leaves.pop(name, None)
    translator.index_dims = saved_dims
    return ir.scan(carry=carry_n, init=inits_n, step=steps_n, slots=slots, seqs=seqs,
                   lags=tuple(int(lag) for _, _, lag, _ in bindings), bounds=bounds,
                   emit=emit_n, length=length, mode=str(mode), reverse=bool(reverse))
