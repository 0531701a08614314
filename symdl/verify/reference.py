"""An independent reference for checks: SymPy itself evaluates a definition.

Bind the dimension symbols to integers, expand every matrix expression into explicit entries
(structurally, from each node's mathematical definition: softmax and log-sum-exp included)
and compile with ``sympy.lambdify`` over NumPy. Nothing here uses symdl's IR, autodiff,
evaluator or code generator, so a kernel compared with it is compared with the *definition*.
``modules=COMPLEX_REFERENCE`` evaluates the same expansion on complex arrays (complex step).
"""

from __future__ import annotations

import builtins
import keyword
import re
import time
from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

# Only the classes, to recognise the nodes; their meaning is re-derived in ``explicit``.
from symdl.define.recurrence import IndexedPart, PrintedScan, Recurrence, ScanEntry
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
from symdl.errors import SymdlError, UnsupportedError
from symdl.primitives.registry import NOT_COMPLEX_STEPPABLE as _SCALAR_NOT_STEPPABLE
from symdl.printing.reductions import ArgMaxOver, MaxOver
from symdl.printing.to_sympy import IndexForm, in_index_notation

NUMPY_REFERENCE: dict[str, Callable] = {
    # Written here, not imported from symdl.primitives.functions, so the reference shares no code.
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "relu": lambda x: np.maximum(x, 0.0),
    "Heaviside": lambda x, h0=0.0: np.heaviside(x, h0),
    "KroneckerDelta": lambda a, b: 1.0 * (a == b),
}

COMPLEX_REFERENCE: dict[str, Callable] = {
    # Analytic continuations (no max, no abs): valid for a tiny imaginary part.
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "softplus": lambda x: np.log(1.0 + np.exp(x)),
    "KroneckerDelta": lambda a, b: 1.0 * (a == b),
}

NOT_COMPLEX_STEPPABLE: tuple[str, ...] = (*_SCALAR_NOT_STEPPABLE, "Norm", "Spectrum")
"""Names of what a complex step must not differentiate: the scalar functions of symdl's
registry (kinks, and erf: smooth, but no complex implementation here), a list of names, no
code; and the nuclear and 2-norms, singular values and eigenvalues, which NumPy computes from
an SVD or eigendecomposition (of a complex matrix: another function). The Frobenius norm is
written out, analytic."""


def explicit(e: sp.Basic, dims: Mapping[sp.Symbol, int],
             known: Mapping[str, sp.MatrixBase] | None = None,
             hoisted: dict[str, sp.MatrixBase] | None = None, split: bool = False,
             budget: Budget | None = None) -> sp.Basic:
    """``e`` with its dimensions bound and every matrix expression written out entry by entry.

    Args:
        e: a scalar or matrix SymPy expression.
        dims: sizes of the dimension symbols.
        known: explicit matrices for MatrixSymbols by name (earlier steps of a model).
        hoisted: when given, an entry ``M[i, j]`` of a matrix expression at symbolic indices
            (an index form's free indices) reads a new MatrixSymbol instead, and ``hoisted``
            maps its name to ``M`` written out. Otherwise the whole explicit ``M`` would be
            printed again at every such entry (tens of seconds to lambdify a Hessian block).
        split: with ``hoisted``, every composite matrix subexpression is hoisted (in the
            order it must be computed: operands first), so each entry written out is a small
            expression in the entries of its operands. Written out whole, a network of two
            layers in one expression has entries of thousands of terms that SymPy's
            assumption queries take minutes to multiply.
        budget: raises ``ReferenceBudgetExceededError`` once its time is spent.
    """
    known = dict(known or {})
    hoisted_names: dict[sp.Basic, sp.MatrixSymbol] = {}
    prefix = "hoisted"
    if hoisted is not None:
        # Hoisted names are identifiers (lambdify cannot rename a MatrixSymbol) that no input
        # name starts with, so they cannot collide (inputs are passed in a dict by name).
        taken = set(_array_symbols(sp.sympify(e))) | set(known)
        while any(name.startswith(prefix) for name in taken):
            prefix = "_" + prefix

    def size(s) -> int:
        return int(sp.sympify(s).subs(dims))

    outside: list[sp.Expr] = [sp.Integer(0)]  # what a read outside an array gives, innermost last

    def go(e: sp.Basic) -> sp.Basic:
        if budget is not None:
            budget.check()
        if isinstance(e, Total):
            return sp.Add(*go(e.arg))
        if isinstance(e, (Recurrence, PrintedScan, ScanEntry)):
            if hoisted is None:
                raise UnsupportedError(f"{type(e).__name__}: a recurrence is evaluated as a "
                                       "loop over t, as a hoisted piece only")
            if isinstance(e, ScanEntry):
                return hoist_scan(e.args[0])[tuple(go(i) for i in e.args[1:])]
            return hoist_scan(e)
        if isinstance(e, sp.Trace):
            return go(e.arg).trace()
        if isinstance(e, (Det, LogDet)) and hoisted is not None:
            # NumPy takes the determinant of the hoisted matrix (SymPy's symbolic one grows
            # factorially with its size).
            return type(e)(hoist(e.arg), e.spd)
        if isinstance(e, Norm) and e.ord == "fro":  # sqrt(Σ m_ij²), analytic
            return sp.sqrt(sp.Add(*[t**2 for t in go(e.arg)]))
        if isinstance(e, Norm) and hoisted is not None:  # NumPy's SVD of the hoisted matrix
            return Norm(hoist(e.arg), e.ord)
        if isinstance(e, Norm):
            raise UnsupportedError(f"{e}: a nuclear or 2-norm is computed by NumPy from "
                                            "a hoisted matrix only")
        if isinstance(e, (Det, LogDet)):  # the determinant of the explicit matrix
            value = go(e.arg).det()
            return sp.log(sp.Abs(value)) if isinstance(e, LogDet) else value
        if isinstance(e, MatrixExpr):
            return sp.ImmutableMatrix(matrix(e))
        if isinstance(e, sp.Sum):
            return go(_expand_sum(e.subs(dims), budget))
        if isinstance(e, sp.Symbol) and e in dims:
            return sp.Integer(dims[e])
        if isinstance(e, sp.Symbol) and str(e) in known:
            return known[str(e)]
        if (hoisted is not None and isinstance(e, MatrixElement)
                and not (e.i.is_Integer and e.j.is_Integer)):
            parent = e.parent
            if isinstance(parent, sp.MatrixSymbol) and str(parent.name) not in known:
                rows, cols = (size(s) for s in parent.shape)
                return sp.MatrixSymbol(parent.name, rows, cols)[go(e.i), go(e.j)]
            return hoist(parent)[go(e.i), go(e.j)]
        if isinstance(e, sp.Indexed) and e.base.shape is not None:
            # Without its shape: the dimensions in it are not inputs of the lambdified body
            # (an elementwise index form, with no Sum to bind them, asked for them).
            return _zero_outside(sp.IndexedBase(e.base.label), e.indices,
                                 [sp.sympify(s).subs(dims) for s in e.base.shape],
                                 outside[-1])
        if isinstance(e, (MaxOver, ArgMaxOver)):
            # In a maximum over a window, padding never wins: it reads -inf (PyTorch's
            # max_pool2d pads so), not 0.
            outside.append(-sp.oo)
            try:
                return e.func(*[go(a) for a in e.args])
            finally:
                outside.pop()
        if not e.args or isinstance(e, (sp.Indexed, sp.IndexedBase, sp.Lambda)):
            return e
        return e.func(*[go(a) for a in e.args])

    def hoist(parent: MatrixExpr) -> sp.MatrixSymbol:
        if parent not in hoisted_names:
            entries = matrix(parent)  # its operands are hoisted first (split)
            if parent not in hoisted_names:
                name = f"{prefix}{len(hoisted)}"
                hoisted[name] = entries
                hoisted_names[parent] = sp.MatrixSymbol(name, entries.rows, entries.cols)
        return hoisted_names[parent]

    def hoist_scan(scan: sp.Basic) -> sp.IndexedBase:
        # A recurrence is its own piece: a loop over t around its step, each step's
        # equations written out and lambdified once (``_ScanPiece``), never unrolled.
        if scan not in hoisted_names:
            name = f"{prefix}{len(hoisted)}"
            hoisted[name] = _ScanPiece(scan, dims, budget)
            hoisted_names[scan] = sp.IndexedBase(name)
        return hoisted_names[scan]

    built: dict[MatrixExpr, sp.MatrixBase] = {}

    def matrix(e: MatrixExpr) -> sp.MatrixBase:
        # A subexpression used several times (softmax in its own derivative) is built once.
        if (e not in built and split and hoisted is not None and isinstance(e, sp.MatPow)
                and not isinstance(e, sp.Inverse) and sp.sympify(e.exp).is_Integer
                and e.exp != 0):
            # An integer power: a product of copies of the base or of its inverse.
            factor = e.base if e.exp > 0 else sp.Inverse(e.base)
            built[e] = matrix(sp.MatMul(*[factor] * abs(int(e.exp)), evaluate=False)
                              if abs(int(e.exp)) > 1 else factor)
        if e not in built and split and hoisted is not None and isinstance(e, sp.Inverse):
            # NumPy inverts the hoisted operand (SymPy's symbolic inverse of a matrix of
            # symbols grows factorially with its size).
            operand = hoist(e.arg)
            name = f"{prefix}{len(hoisted)}"
            hoisted[name] = sp.Inverse(operand)
            placeholder = sp.MatrixSymbol(name, *operand.shape)
            hoisted_names[e] = placeholder
            built[e] = sp.Matrix(*operand.shape, lambda i, j: placeholder[i, j])
        if e not in built and isinstance(e, Spectrum):
            # NumPy's SVD or eigendecomposition of the hoisted operand.
            if hoisted is None:
                raise UnsupportedError(f"{e}: singular values and eigenvalues are "
                                                "computed by NumPy from a hoisted matrix only")
            operand = hoist(e.arg)
            name = f"{prefix}{len(hoisted)}"
            hoisted[name] = Spectrum(operand, e.part)
            rows, cols = (size(s) for s in e.shape)
            placeholder = sp.MatrixSymbol(name, rows, cols)
            hoisted_names[e] = placeholder
            built[e] = sp.Matrix(rows, cols, lambda i, j: placeholder[i, j])
        if e not in built:
            entries = build(e)
            if split and hoisted is not None and not isinstance(e, _NOT_HOISTED):
                name = f"{prefix}{len(hoisted)}"
                hoisted[name] = entries
                placeholder = sp.MatrixSymbol(name, entries.rows, entries.cols)
                hoisted_names[e] = placeholder
                entries = sp.Matrix(entries.rows, entries.cols,
                                    lambda i, j: placeholder[i, j])
            built[e] = entries
        return built[e]

    def build(e: MatrixExpr) -> sp.MatrixBase:
        rows, cols = (size(s) for s in e.shape)
        if isinstance(e, sp.MatrixSymbol):
            if str(e.name) in known:
                return known[str(e.name)]
            bound = sp.MatrixSymbol(e.name, rows, cols)
            return sp.Matrix(rows, cols, lambda i, j: bound[i, j])
        if isinstance(e, sp.MatMul):
            out = sp.Integer(1)
            for a in e.args:
                out = out * (matrix(a) if isinstance(a, MatrixExpr) else go(a))
            return out
        if isinstance(e, sp.MatAdd):
            out = sp.zeros(rows, cols)
            for a in e.args:
                out = out + matrix(a)
            return out
        if isinstance(e, sp.Transpose):
            return matrix(e.arg).T
        if isinstance(e, sp.HadamardProduct):
            out = sp.ones(rows, cols)
            for a in e.args:
                out = out.multiply_elementwise(matrix(a))
            return out
        if isinstance(e, sp.HadamardPower):
            exponent = go(e.exp)
            return matrix(e.base).applyfunc(lambda t: t**exponent)
        if isinstance(e, ElementwiseApplyFunction):
            # Unevaluated: Heaviside refuses entries of a MatrixSymbol (not known real).
            inner = matrix(e.expr)
            with sp.evaluate(False):
                return inner.applyfunc(e.function)
        if isinstance(e, sp.OneMatrix):
            return sp.ones(rows, cols)
        if isinstance(e, sp.ZeroMatrix):
            return sp.zeros(rows, cols)
        if isinstance(e, sp.Identity):
            return sp.eye(rows)
        if isinstance(e, PseudoInverse):  # (A^T A)^{-1} A^T or A^T (A A^T)^{-1}
            return matrix(e.explicit())
        if isinstance(e, DiagMatrix):
            return sp.diag(*list(matrix(e.args[0])))
        if isinstance(e, (Softmax, LogSumExp)):
            z = matrix(e.arg)
            lanes = ([z.row(i) for i in range(z.rows)] if e.axis == 1
                     else [z.col(j) for j in range(z.cols)])
            sums = [sp.Add(*[sp.exp(t) for t in lane]) for lane in lanes]
            if isinstance(e, LogSumExp):
                vals = [sp.log(s) for s in sums]
                return sp.Matrix(vals) if e.axis == 1 else sp.Matrix([vals])
            if e.axis == 1:
                return sp.Matrix(z.rows, z.cols, lambda i, j: sp.exp(z[i, j]) / sums[i])
            return sp.Matrix(z.rows, z.cols, lambda i, j: sp.exp(z[i, j]) / sums[j])
        if isinstance(e, MatrixElement):
            return matrix(e.parent)[e.i, e.j]
        raise NotImplementedError(f"the reference cannot expand {type(e).__name__}: {e}")

    return go(sp.sympify(e))


_NOT_HOISTED = (sp.MatrixSymbol, sp.Identity, sp.OneMatrix, sp.ZeroMatrix, sp.Transpose,
                MatrixElement)
"""Matrix expressions whose entries are already as small as an entry can be."""


class ReferenceBudgetExceededError(SymdlError):
    """The SymPy reference would take (or took) longer than its time budget."""


SECONDS_PER_NODE = 2e-5
"""A lower bound of what ``sympy.lambdify`` costs per node of the expression it prints
(measured 2e-5 to 8e-5 s on this project's 2-core machine, idle to loaded: a two-layer
network's backward pass, 30,000 nodes, in 0.6 to 2.5 s); used to refuse a body before printing
it, so only what surely does not fit is refused."""


class Budget:
    """A time budget for building the reference, checked between its pieces of work."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()
        self.rate = SECONDS_PER_NODE

    def printed(self, nodes: int, seconds: float) -> None:
        """Learns the machine's printing rate from a body of ``nodes`` that took ``seconds``
        (a busy machine prints several times slower than ``SECONDS_PER_NODE``)."""
        if nodes >= 1000:
            self.rate = max(self.rate, seconds / nodes)

    def spent(self) -> float:
        return time.monotonic() - self.start

    def check(self) -> None:
        """Raises ``ReferenceBudgetExceededError`` once the budget is spent."""
        if self.spent() > self.seconds:
            raise ReferenceBudgetExceededError(
                f"exceeded its {self.seconds:g} s budget after {self.spent():.1f} s")

    def before_printing(self, nodes: int) -> None:
        """Raises ``ReferenceBudgetExceededError`` if printing ``nodes`` more would not fit."""
        estimate = self.spent() + nodes * self.rate
        if estimate > self.seconds:
            raise ReferenceBudgetExceededError(
                f"estimated {estimate:.0f} s ({nodes} expression nodes to print), over its "
                f"{self.seconds:g} s budget")


def _zero_outside(base: sp.IndexedBase, indices: tuple, shape: list,
                  outside: sp.Expr = sp.S.Zero) -> sp.Basic:
    """``base[indices]``, and ``outside`` (0: zero padding; -inf in a maximum) where a
    computed index (``2*t + k - 1``) falls outside the array, as the definition means it.
    NumPy would wrap a negative position around or raise on one past the end. A position
    known only when the entry is evaluated reads the array at the position clamped inside
    and is then selected away."""
    if not all(n.is_Integer for n in shape):
        return base[indices]
    inside, clamped = [], []
    for index, n in zip(indices, shape, strict=True):
        index = sp.sympify(index)
        if index.is_Integer:
            if not 0 <= int(index) < int(n):
                return outside
            clamped.append(index)
        elif index.is_Symbol:  # a plain index runs over its own axis
            clamped.append(index)
        else:
            inside.append(sp.And(index >= 0, index <= n - 1))
            clamped.append(sp.Min(sp.Max(index, 0), n - 1))
    if not inside:
        return base[tuple(clamped)]
    return _ReadInside(base[tuple(clamped)], sp.And(*inside), outside)


class _ReadInside(sp.Function):
    """``value`` where ``inside`` holds, else ``outside``: a read at a computed position. Not a
    ``Piecewise``: SymPy folds a Piecewise out of any expression around it, also out of a
    maximum over a window (``max_a``), and its condition on ``a`` would then stand outside
    the maximum that binds ``a``."""

    nargs = 3

    def _numpycode(self, printer) -> str:
        value, inside, outside = self.args
        return (f"({printer._print(value)} if {printer._print(inside)} else "
                f"{printer._print(outside)})")

    _pythoncode = _numpycode


def _tree_size(e: sp.Basic) -> int:
    """The number of nodes ``e`` prints as (shared subtrees counted at every use), counted
    over the distinct subtrees only."""
    sizes: dict[sp.Basic, int] = {}
    stack = [e]
    while stack:
        node = stack[-1]
        if node in sizes:
            stack.pop()
            continue
        pending = [a for a in node.args if a not in sizes]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        sizes[node] = 1 + sum(sizes[a] for a in node.args)
    return sizes[e]


def explicit_model(steps, dims: Mapping[sp.Symbol, int]) -> sp.Basic:
    """The last step of a model ``[(symbol, definition), ...]`` written out, each named
    intermediate replaced by its own explicit entries."""
    known: dict[str, sp.Basic] = {}
    body = None
    for symbol, definition in steps:
        body = explicit(definition, dims, known)
        if symbol is not None:
            name = str(symbol.name) if isinstance(symbol, sp.MatrixSymbol) else str(symbol)
            known[name] = sp.ImmutableMatrix(body) if isinstance(body, sp.MatrixBase) else body
    return body


def _array_symbols(e: sp.Basic) -> dict[str, sp.Basic]:
    # One traversal: a large explicit body takes seconds per walk. ``explicit`` writes sums
    # out, so usually every Symbol left is an input, a free index or an Indexed's label; where
    # a Sum, a maximum over indices or a Lambda is left, its bound variables are not inputs
    # (a second walk).
    atoms = e.atoms(sp.MatrixSymbol, sp.Indexed, sp.Symbol, ExprWithLimits, sp.Lambda)
    if any(isinstance(a, (ExprWithLimits, sp.Lambda)) for a in atoms):  # a Sum, a max over
        free = e.free_symbols
        atoms = {a for a in atoms if not isinstance(a, sp.Symbol) or a in free}
    found: dict[str, sp.Basic] = {}
    for m in atoms:
        if isinstance(m, sp.MatrixSymbol):
            found[str(m.name)] = m
        elif isinstance(m, sp.Indexed):
            found[str(m.base.label)] = m.base
    for s in atoms:
        if isinstance(s, sp.Symbol) and not isinstance(s, sp.Dummy):
            found.setdefault(str(s), s)
    return found


def uses_function(body: sp.Basic, names: tuple[str, ...]) -> list[str]:
    """The names among ``names`` of functions applied somewhere in ``body``."""
    if isinstance(body, sp.MatrixBase):
        atoms = set().union(*(sp.sympify(t).atoms(sp.Function, sp.Max, sp.Min, sp.Abs)
                              for t in body))
    else:
        atoms = body.atoms(sp.Function, sp.Max, sp.Min, sp.Abs, Norm, Spectrum)
    return sorted({type(a).__name__ for a in atoms} & set(names))


def lambdified(body: sp.Basic, complex_valued: bool = False,
               extra_args: tuple[sp.Symbol, ...] = ()) -> Callable[[Mapping], object]:
    """A NumPy function of a dict of values (by name) computing an explicit ``body``.

    A scalar body gives a float (complex with ``complex_valued``), a matrix a 2-d array.
    ``extra_args`` are further symbols (free indices) passed positionally after the dict.
    """
    if isinstance(body, sp.MatrixBase):
        body = sp.ImmutableMatrix(body)
    symbols = _array_symbols(body)
    for s in extra_args:
        symbols.pop(str(s), None)
    names = sorted(symbols)
    # User names reach generated Python: ``tanh`` shadows NumPy's tanh, ``lambda`` and ``a b``
    # are no identifiers, ``x0`` is a name lambdify's CSE gives its temporaries. Such
    # arguments are renamed to generated identifiers (only those: rebuilding every entry
    # costs seconds on a large body); values are still read by the user's name.
    renamed = {symbols[k]: _generated_symbol(symbols[k], f"_symdl_arg{i}")
               for i, k in enumerate(names) if not _safe_name(k)}
    indices = [s if _safe_name(str(s)) else sp.Symbol(f"_symdl_index{i}", integer=True)
               for i, s in enumerate(extra_args)]
    renamed.update({s: t for s, t in zip(extra_args, indices, strict=True) if s != t})
    if renamed:
        body = body.xreplace(renamed)
    modules = [COMPLEX_REFERENCE if complex_valued else NUMPY_REFERENCE, "numpy"]
    arguments = [renamed.get(symbols[k], symbols[k]) for k in names] + indices
    fn = sp.lambdify(arguments, body, modules=modules, cse=_repeats(body))
    kind = np.complex128 if complex_valued else np.float64
    is_matrix = isinstance(body, (sp.MatrixBase, MatrixExpr))

    def argument(value: object) -> object:
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.integer) and array.ndim:
            return array  # an index array (an embedding's ids) indexes: it stays integer
        return array.astype(kind) if array.ndim else kind(array.reshape(()))

    def call(values: Mapping, *extra) -> object:
        args = [argument(values[k]) for k in names]
        out = fn(*args, *extra)
        if is_matrix:
            return np.asarray(out, dtype=kind).reshape(tuple(int(s) for s in body.shape))
        return kind(out)

    return call


_NAMESPACE = frozenset(dir(np)) | frozenset(dir(builtins)) | frozenset(NUMPY_REFERENCE) | {
    "Dummy", "numpy", "math", "mpmath", "sympy", "scipy"}


def _safe_name(name: str) -> bool:
    """Whether ``name`` can be a parameter of lambdify's generated function as it is."""
    return (name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")
            and name not in _NAMESPACE and not re.fullmatch(r"x\d+", name))


def _repeats(body: sp.Basic) -> bool:
    """Whether ``body`` prints shared subexpressions more than once in all (then CSE pays;
    on a body without repeats it only costs time). Never with a bound index left (a maximum
    over a window prints as a Python lambda of it): CSE would lift an expression of that
    index out of the lambda that binds it."""
    if isinstance(body, sp.MatrixBase):
        body = sp.ImmutableMatrix(body)
    distinct = set()
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, ExprWithLimits):
            return False
        if node not in distinct:
            distinct.add(node)
            stack.extend(node.args)
    return _tree_size(body) > 2 * len(distinct)


def _generated_symbol(s: sp.Basic, name: str) -> sp.Basic:
    """``s`` (a MatrixSymbol, IndexedBase or Symbol) under the identifier ``name``."""
    if isinstance(s, sp.MatrixSymbol):
        return sp.MatrixSymbol(name, *s.shape)
    if isinstance(s, sp.IndexedBase):
        return sp.IndexedBase(name, shape=s.shape)
    return sp.Symbol(name, **s.assumptions0)


def sympy_function(expr: sp.Basic, dims: Mapping[sp.Symbol, int],
                   budget: Budget | None = None) -> Callable[[Mapping], object]:
    """A NumPy function of a dict of values (by name) computing ``expr`` the SymPy way.

    ``expr`` may be a scalar or a matrix expression in the dimension symbols ``dims``.
    The result is a float for a scalar and a 2-d array for a matrix.
    """
    expr = sp.sympify(expr)
    # Idx carries its range: after binding dims the summand's Idx and the Sum's would differ.
    plain = {i: sp.Symbol(str(i.label), integer=True) for i in expr.atoms(sp.Idx)}
    return _SplitFunction(expr.xreplace(plain), dims, budget=budget)


class _SplitFunction:
    """An explicit expression evaluated piece by piece: every composite matrix subexpression
    is its own lambdified matrix (operands first), read by the next ones by a generated name.
    ``bodies`` are every piece written out (to look for functions in them)."""

    def __init__(self, expr: sp.Basic, dims: Mapping[sp.Symbol, int],
                 complex_valued: bool = False, extra_args: tuple[sp.Symbol, ...] = (),
                 budget: Budget | None = None, scans: dict | None = None):
        hoisted: dict[str, sp.MatrixBase] = {}
        body = explicit(expr, dims, hoisted=hoisted, split=True, budget=budget)
        pieces = [*hoisted.values(), body]
        sizes = [0 if isinstance(b, (_ScanPiece, sp.IndexedBase)) else
                 _tree_size(sp.ImmutableMatrix(b) if isinstance(b, sp.MatrixBase)
                            else sp.sympify(b)) for b in pieces]
        if budget is not None:
            budget.before_printing(sum(sizes))
        # A recurrence's pieces are its steps' bodies (what ``uses_function`` looks into).
        self.bodies: list[sp.Basic] = []
        scans = {} if scans is None else scans
        functions = []
        for b, size in zip(pieces, sizes, strict=True):
            start = time.monotonic()
            extra = extra_args if b is body else ()
            if isinstance(b, _ScanPiece):
                # Built once per chain: the forward recurrence a derived one reads (an LSTM's
                # cell states) recurs in every equation of the backward pass.
                key = (b.key, complex_valued)
                if key not in scans:
                    scans[key] = (b.evaluator(complex_valued, scans), b.bodies)
                functions.append(scans[key][0])
                self.bodies.extend(scans[key][1])
                continue
            if isinstance(b, sp.IndexedBase):  # the definition is a recurrence: its value
                functions.append(lambda values, *_, name=str(b.label): values[name])
                continue
            self.bodies.append(b)
            if b is body and not extra_args and _reads_whole(body, hoisted):
                # The body is the last hoisted matrix, read whole: no second lambdify.
                last = next(reversed(hoisted))
                functions.append(lambda values, *_, name=last: values[name])
                continue
            functions.append(lambdified(b, complex_valued, extra_args=extra))
            if budget is not None:
                budget.printed(size, time.monotonic() - start)
                budget.before_printing(0)
        self._matrices = list(zip(hoisted, functions[:-1], strict=True))
        self._body = functions[-1]

    def environment(self, values: Mapping) -> dict:
        """``values`` and every hoisted matrix computed from them."""
        env = dict(values)
        for name, fn in self._matrices:
            env[name] = fn(env)
        return env

    def __call__(self, values: Mapping, *extra) -> object:
        return self._body(self.environment(values), *extra)


def _reads_whole(body: sp.Basic, hoisted: Mapping[str, object]) -> bool:
    """Whether ``body`` is the entries of the last hoisted matrix, each at its place."""
    if not hoisted or not isinstance(body, sp.MatrixBase):
        return False
    last = next(reversed(hoisted))
    return all(isinstance(t, MatrixElement) and str(t.parent.name) == last
               and (t.i, t.j) == (i, j) and tuple(t.parent.shape) == tuple(body.shape)
               for (i, j), t in zip(np.ndindex(*body.shape), body, strict=True))


def index_form_function(form, dims: Mapping[sp.Symbol, int], complex_valued: bool = False,
                        budget: Budget | None = None) -> Callable[[Mapping], np.ndarray]:
    """A NumPy function evaluating an ``IndexForm`` entry by entry (its free indices are
    passed as integers), for small sizes; the result has the form's shape."""
    return _IndexFormFunction(form, dims, complex_valued, budget)


class _IndexFormFunction:
    def __init__(self, form, dims: Mapping[sp.Symbol, int], complex_valued: bool,
                 budget: Budget | None, scans: dict | None = None):
        plain = {i: sp.Symbol(str(i.label), integer=True) for i in form.expr.atoms(sp.Idx)}
        indices = tuple(plain.get(i, i) for i in form.indices)
        self._entry = _SplitFunction(form.expr.xreplace(plain), dims, complex_valued,
                                     extra_args=indices, budget=budget, scans=scans)
        self.bodies = self._entry.bodies
        self._shape = tuple(int(sp.sympify(s).subs(dims)) for s in form.shape)
        self._kind = np.complex128 if complex_valued else np.float64
        self._budget = budget

    def __call__(self, values: Mapping) -> np.ndarray:
        env = self._entry.environment(values)
        out = np.empty(self._shape, dtype=self._kind)
        for k, idx in enumerate(np.ndindex(*self._shape)):
            if self._budget is not None and k % 256 == 0:
                self._budget.check()
            out[idx] = self._entry._body(env, *idx)
        return out


class _Alias:
    """A step that is another name for an array (``dY = G``)."""

    bodies: tuple = ()

    def __init__(self, name: str):
        self._name = name

    def __call__(self, values: Mapping) -> object:
        return values[self._name]


def _step_name(symbol: sp.Basic | None) -> str | None:
    if symbol is None:
        return None
    return str(symbol.name) if isinstance(symbol, sp.MatrixSymbol) else str(symbol)


class Chain:
    """Evaluates a list of equations in order, each one explicit and lambdified on its own:
    later equations read earlier results by name, so nothing is inlined (an inlined
    gradient repeats the forward pass in every entry and takes minutes to lambdify). Within
    an equation every composite matrix subexpression is its own piece, too (``explicit``'s
    ``split``). With a ``budget``, building stops with ``ReferenceBudgetExceededError`` once its
    time is spent, or before printing what is estimated not to fit."""

    def __init__(self, steps, dims: Mapping[sp.Symbol, int], complex_valued: bool = False,
                 budget: Budget | None = None):
        self.bodies: list[sp.Basic] = []
        self._fns: list[tuple[str | None, Callable]] = []
        scans: dict = {}  # every recurrence, built once for all the equations
        for symbol, expr in steps:
            # A convolution, pooling or flatten (as written with the vocabulary, or as a
            # result prints) is evaluated from what it means entry by entry.
            expr = in_index_notation(expr)
            if isinstance(symbol, sp.Indexed):  # a tensor step in index notation, Q[b, s, e]
                expr = IndexForm(tuple(symbol.indices), tuple(symbol.base.shape), expr)
                symbol = symbol.base
            if isinstance(expr, sp.IndexedBase):  # another name for a tensor: dY = G
                fn = _Alias(str(expr.label))
            elif hasattr(expr, "indices"):
                fn = _IndexFormFunction(expr, dims, complex_valued, budget, scans)
            else:
                expr = sp.sympify(expr)
                plain = {i: sp.Symbol(str(i.label), integer=True) for i in expr.atoms(sp.Idx)}
                fn = _SplitFunction(expr.xreplace(plain), dims, complex_valued, budget=budget,
                                    scans=scans)
            self.bodies.extend(fn.bodies)
            self._fns.append((_step_name(symbol), fn))

    def __call__(self, values: Mapping) -> tuple[dict, object]:
        env = dict(values)
        result = None
        for name, fn in self._fns:
            result = fn(env)
            if name is not None:
                env[name] = result
        return env, result


def _expand_sum(e: sp.Sum, budget: Budget | None = None) -> sp.Basic:
    """A sum over concrete ranges written out term by term. ``Sum.doit`` would look for a
    closed form first (partial fractions, ...), which took minutes on some random
    definitions of the property tests."""
    terms = [e.function]
    for var, lo, hi in e.limits:
        if not (lo.is_Integer and hi.is_Integer):
            return e.doit()
        if budget is not None:
            budget.check()
        terms = [t.xreplace({var: sp.Integer(k)}) for t in terms
                 for k in range(int(lo), int(hi) + 1)]
    return sp.Add(*terms)


class _ScanPiece:
    """A recurrence (``symdl.scan``'s ``Recurrence``, or a derived one as printed,
    ``PrintedScan``) evaluated as its definition says: a loop over ``t`` around its step, whose
    equations (new carries, output) are written out and lambdified once, as functions of the
    carries, the slots (the sequences read at ``t`` or ``t - 1``) and the values; never
    unrolled. Each composite matrix subexpression of a step is a piece of its own, built once
    in a chain (``scans``) and computed once per ``t``: the printed backward pass of an LSTM
    repeats the forward gates in each of its 17 equations (39 s to build them one by one, 2.5 s
    shared)."""

    def __init__(self, scan: sp.Basic, dims: Mapping[sp.Symbol, int], budget: Budget | None):
        self._scan, self._dims, self._budget = scan, dims, budget
        if isinstance(scan, Recurrence):
            self._mode, self._reverse, self._final = "stack", False, -1
            self._carries = scan.carries
            self._steps = list(scan.steps)
            self._emit_carry = 0  # the value: the first state's sequence
            self._reads = [(scan.slot, scan.xs, 0, None)]
            self._inits = scan.inits
            length = scan.length
        else:
            mode, reverse, carry, step, emit, bindings, length, init = scan._fields
            self._mode, self._reverse = mode, reverse
            self._carries = tuple(carry)
            self._final = list(carry).index(emit) if mode == "final" else -1
            self._steps = [*step, emit]
            self._emit_carry = None
            self._reads = [(slot, seq, int(lag), None if int(lag) == 0 else first)
                           for slot, seq, lag, first in bindings]
            self._inits = tuple(init)
        self._length = int(sp.sympify(length).subs(dims))
        self._sizes = {s: sp.Integer(v) for s, v in dims.items()}
        self.key = scan.xreplace(self._sizes)
        """The recurrence with its sizes bound: the same one wherever it is read."""
        self.bodies: list[sp.Basic] = []

    def _part(self, e: sp.Basic, complex_valued: bool,
              scans: dict | None) -> Callable[[Mapping], object]:
        """A function of the values computing a part (a step, a sequence, a first value).
        A part is a function of values by name: one built already for another recurrence of
        the chain (backpropagation through time recomputes the same gates in every one) is
        taken from ``scans``."""
        key = ("part", e.xreplace(self._sizes), complex_valued)
        if scans is not None and key in scans:
            fn = scans[key]
            self.bodies.extend(getattr(fn, "bodies", ()))
            return fn
        fn = self._new_part(e, complex_valued, scans)
        if scans is not None:
            scans[key] = fn
        return fn

    def _new_part(self, e: sp.Basic, complex_valued: bool,
                  scans: dict | None) -> Callable[[Mapping], object]:
        if isinstance(e, IndexedPart):
            expr, indices, shape = e.args
            fn = _IndexFormFunction(IndexForm(tuple(indices), tuple(shape), expr), self._dims,
                                    complex_valued, self._budget, scans)
        elif isinstance(e, (sp.IndexedBase, sp.Symbol)) and not isinstance(e, sp.Dummy):
            # A sequence by name: an input, or an earlier equation of the chain.
            name = str(e.label if isinstance(e, sp.IndexedBase) else e)
            return lambda values: values[name]
        else:
            fn = _SplitFunction(sp.sympify(e), self._dims, complex_valued, budget=self._budget,
                                scans=scans)
        self.bodies.extend(fn.bodies)
        return fn

    def _piece(self, e: MatrixExpr, complex_valued: bool,
               scans: dict) -> tuple[sp.MatrixSymbol, list[tuple[str, Callable]]]:
        """A composite matrix subexpression of a step as a piece of its own, read by name:
        the symbol naming it and the pieces to compute for it, operands first. Each distinct
        subexpression is written out and lambdified once in a chain (backpropagation
        through time recomputes the forward gates in every recurrence it prints)."""
        key = ("piece", e.xreplace(self._sizes), complex_valued)
        if key not in scans:
            needs: list[tuple[str, Callable]] = []
            operands = {}
            for a in e.args:
                if isinstance(a, MatrixExpr) and not _is_leaf(a):
                    operands[a], more = self._piece(a, complex_valued, scans)
                    needs.extend(n for n in more if n not in needs)
            name = f"_symdl_step{sum(1 for k in scans if k[0] == 'piece')}"
            fn = _SplitFunction(e.xreplace(operands), self._dims, complex_valued,
                                budget=self._budget, scans=scans)
            scans[key] = (sp.MatrixSymbol(name, *e.shape), [*needs, (name, fn)])
        symbol, needs = scans[key]
        return symbol, needs

    def _steps_function(self, complex_valued: bool,
                        scans: dict | None) -> Callable[[Mapping], list]:
        """The step's new carries (and output) from the carries, slots and values."""
        scans = {} if scans is None else scans
        order: list[tuple[str, Callable]] = []
        reads: list[Callable] = []
        for step in self._steps:
            if isinstance(step, MatrixExpr) and not _is_leaf(step):
                symbol, needs = self._piece(step, complex_valued, scans)
                order.extend(n for n in needs if n not in order)
                reads.append(lambda env, name=str(symbol.name): env[name])
            else:
                reads.append(self._part(step, complex_valued, scans))
        for _, fn in order:
            self.bodies.extend(fn.bodies)

        def steps(inner: dict) -> list:
            for name, fn in order:
                inner[name] = fn(inner)
            return [read(inner) for read in reads]

        return steps

    def evaluator(self, complex_valued: bool,
                  scans: dict | None = None) -> Callable[[Mapping], np.ndarray]:
        """The loop over t, with its pieces lambdified for real or complex values (the
        recurrences it reads taken from ``scans`` where built already)."""
        step = self._steps_function(complex_valued, scans)
        inits = [self._part(i, complex_valued, scans) for i in self._inits]
        reads = [(str(slot.name), self._part(seq, complex_valued, scans), lag,
                  None if first is None else self._part(first, complex_valued, scans))
                 for slot, seq, lag, first in self._reads]
        carry_names = [str(c.name) for c in self._carries]
        kind = np.complex128 if complex_valued else np.float64

        def run(values: Mapping, *_) -> np.ndarray:
            env = dict(values)
            carries = [np.asarray(f(env), dtype=kind) for f in inits]
            carries = [np.broadcast_to(c, _shape(k, self._dims)) if c.ndim == 0 else c
                       for c, k in zip(carries, self._carries, strict=True)]
            sequences = [np.asarray(seq(env), dtype=kind) for _, seq, _, _ in reads]
            firsts = [None if first is None else np.asarray(first(env), dtype=kind)
                      for _, _, _, first in reads]
            outputs = []
            order = range(self._length - 1, -1, -1) if self._reverse else range(self._length)
            for t in order:
                if self._budget is not None:
                    self._budget.check()
                inner = dict(env)
                inner.update(zip(carry_names, carries, strict=True))
                for (slot, _, lag, _), seq, first in zip(reads, sequences, firsts,
                                                         strict=True):
                    inner[slot] = seq[t - lag] if t - lag >= 0 else first
                new = [np.asarray(v, dtype=kind) for v in step(inner)]
                if self._emit_carry is None:  # the steps, then the output
                    new, out = new[:-1], new[-1]
                else:
                    out = new[self._emit_carry]
                carries = [np.broadcast_to(c, old.shape) if c.ndim == 0 else c
                           for c, old in zip(new, carries, strict=True)]
                outputs.append(out)
            if self._mode == "final":
                return carries[self._final]
            if self._mode == "sum":
                return np.sum(outputs, axis=0)
            if self._reverse:
                outputs.reverse()
            return np.stack(outputs)

        return run


def _is_leaf(e: MatrixExpr) -> bool:
    """A matrix read as it is (a symbol, a constant, the transpose of one)."""
    if isinstance(e, sp.Transpose):
        return _is_leaf(e.arg)
    return isinstance(e, (sp.MatrixSymbol, sp.Identity, sp.OneMatrix, sp.ZeroMatrix))


def _shape(matrix: sp.MatrixSymbol, dims: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
    return tuple(int(sp.sympify(s).subs(dims)) for s in matrix.shape)
