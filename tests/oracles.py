"""Independent reference machinery for the symdl test suite (helpers, not tests).

Nothing here calls symdl's derivation or evaluation code. The reference value of a definition
is computed by SymPy itself: bind the dimension symbols to integers, expand every matrix
expression into explicit entries (structurally, from each node's mathematical definition),
and compile with ``sympy.lambdify`` over NumPy. Derivatives of that reference come from
central finite differences, so a derived formula is checked against the *original*
definition, never against another symdl output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.matrices.expressions.matexpr import MatrixExpr

# Only the classes, to recognise the nodes; their meaning is re-derived in ``explicit``.
from symdl.vocabulary import LogSumExp, Softmax, Total

# --------------------------------------------------------------------------------------------
# Dimension bindings and random inputs

SIZES_SMALL = (1, 2, 3, 5, 7)
"""Sizes a dimension symbol is bound to; 1 and odd sizes catch squeezed and transposed axes."""


def bindings(symbols: tuple[sp.Symbol, ...], table: list[tuple[int, ...]]) -> list[dict]:
    """``[{n: 3, d: 2}, ...]`` from a table of sizes, one tuple per binding."""
    return [dict(zip(symbols, row, strict=True)) for row in table]


def binding_id(binding: Mapping[sp.Symbol, int]) -> str:
    """A readable pytest id such as ``n3-d1``."""
    return "-".join(f"{k}{v}" for k, v in binding.items())


def concrete_shape(shape: tuple, dims: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
    """The integer shape of a symbolic shape once ``dims`` are bound."""
    return tuple(int(sp.sympify(s).subs(dims)) for s in shape)


def shape_of(p: sp.Basic, dims: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
    """Integer shape of a MatrixSymbol, shaped IndexedBase, or () for a scalar Symbol."""
    if isinstance(p, sp.MatrixSymbol):
        return concrete_shape(p.shape, dims)
    if isinstance(p, sp.IndexedBase):
        return concrete_shape(p.shape, dims)
    return ()


def name_of(p: sp.Basic) -> str:
    if isinstance(p, sp.MatrixSymbol):
        return str(p.name)
    if isinstance(p, sp.IndexedBase):
        return str(p.label)
    return str(p)


def random_values(symbols: list[sp.Basic], dims: Mapping[sp.Symbol, int],
                  rng: np.random.Generator, scale: float = 1.0,
                  positive: tuple[str, ...] = ()) -> dict[str, np.ndarray | float]:
    """Standard normal arrays (times ``scale``) for each symbol, by name.

    Names listed in ``positive`` get values in [0.5, 2] (for ``log``).
    """
    values: dict[str, np.ndarray | float] = {}
    for s in symbols:
        shape = shape_of(s, dims)
        if name_of(s) in positive:
            a = rng.uniform(0.5, 2.0, size=shape)
        else:
            a = scale * rng.standard_normal(size=shape)
        values[name_of(s)] = float(a) if shape == () else a
    return values


def one_hot(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A ``rows x cols`` matrix whose rows are random one-hot vectors."""
    return np.eye(cols)[rng.integers(0, cols, size=rows)]


# --------------------------------------------------------------------------------------------
# Finite differences


def step(x: float) -> float:
    """The central-difference step for an entry of value ``x``."""
    return 1e-6 * max(1.0, abs(x))


def central_diff(f: Callable[[np.ndarray | float], np.ndarray | float],
                 x: np.ndarray | float) -> np.ndarray:
    """Central finite differences of ``f`` at ``x``, entry by entry, in float64.

    For a scalar ``f`` the result has the shape of ``x``; for an array-valued ``f`` it has
    shape ``f(x).shape + x.shape`` (output axes first, then the axes of ``x``).
    """
    x = np.array(x, dtype=np.float64)
    out_shape = np.shape(f(x.copy() if x.shape else float(x)))
    result = np.zeros(out_shape + x.shape)
    for idx in np.ndindex(*x.shape):
        h = step(float(x[idx]))
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fp = np.asarray(f(xp if x.shape else float(xp)), dtype=np.float64)
        fm = np.asarray(f(xm if x.shape else float(xm)), dtype=np.float64)
        result[(Ellipsis,) + idx] = (fp - fm) / (2 * h)
    return result


def fd_gradient(f: Callable[[Mapping], float], values: Mapping, name: str) -> np.ndarray:
    """∂f/∂values[name] by central differences; ``f`` takes the full dict of values."""

    def along(x):
        changed = dict(values)
        changed[name] = x
        return f(changed)

    return central_diff(along, values[name])


# --------------------------------------------------------------------------------------------
# SymPy as the independent evaluator

NUMPY_REFERENCE: dict[str, Callable] = {
    # Written here, not imported from symdl, so the reference shares no code with symdl.
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "relu": lambda x: np.maximum(x, 0.0),
    "Heaviside": lambda x, h0=0.0: np.heaviside(x, h0),
}


def explicit(e: sp.Basic, dims: Mapping[sp.Symbol, int]) -> sp.Basic:
    """``e`` with its dimensions bound to ``dims`` and every matrix expression written out
    entry by entry, structurally (a matrix becomes an ``ImmutableMatrix``).

    Each node kind is expanded here from its mathematical definition (softmax and
    log-sum-exp included), never through symdl's code. ``Total`` is the sum of the entries,
    ``Trace`` the trace, ``Sum`` over the bound ranges is expanded.
    """

    def size(s) -> int:
        return int(sp.sympify(s).subs(dims))

    def go(e: sp.Basic) -> sp.Basic:
        if isinstance(e, Total):
            return sp.Add(*go(e.arg))
        if isinstance(e, sp.Trace):
            return go(e.arg).trace()
        if isinstance(e, MatrixExpr):
            return sp.ImmutableMatrix(matrix(e))
        if isinstance(e, sp.Sum):
            return go(e.subs(dims).doit())
        if isinstance(e, sp.Symbol) and e in dims:
            return sp.Integer(dims[e])
        if not e.args or isinstance(e, (sp.Indexed, sp.IndexedBase, sp.Lambda)):
            return e
        return e.func(*[go(a) for a in e.args])

    def matrix(e: MatrixExpr) -> sp.MatrixBase:
        rows, cols = (size(s) for s in e.shape)
        if isinstance(e, sp.MatrixSymbol):
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
            return matrix(e.expr).applyfunc(e.function)
        if isinstance(e, sp.OneMatrix):
            return sp.ones(rows, cols)
        if isinstance(e, sp.ZeroMatrix):
            return sp.zeros(rows, cols)
        if isinstance(e, sp.Identity):
            return sp.eye(rows)
        if isinstance(e, DiagMatrix):
            vec = matrix(e.args[0])
            return sp.diag(*list(vec))
        if isinstance(e, (Softmax, LogSumExp)):
            z = matrix(e.arg)
            lanes = [z.row(i) for i in range(z.rows)] if e.axis == 1 else \
                    [z.col(j) for j in range(z.cols)]
            sums = [sp.Add(*[sp.exp(t) for t in lane]) for lane in lanes]
            if isinstance(e, LogSumExp):
                vals = [sp.log(s) for s in sums]
                return sp.Matrix(vals) if e.axis == 1 else sp.Matrix([vals])
            if e.axis == 1:
                return sp.Matrix(z.rows, z.cols, lambda i, j: sp.exp(z[i, j]) / sums[i])
            return sp.Matrix(z.rows, z.cols, lambda i, j: sp.exp(z[i, j]) / sums[j])
        raise NotImplementedError(f"oracle cannot expand {type(e).__name__}: {e}")

    return go(sp.sympify(e))


def _array_symbols(e: sp.Basic) -> dict[str, sp.Basic]:
    found: dict[str, sp.Basic] = {}
    for m in e.atoms(sp.MatrixSymbol):
        found[str(m.name)] = m
    for ind in e.atoms(sp.Indexed):
        found[str(ind.base.label)] = ind.base
    for s in e.free_symbols:
        if isinstance(s, sp.Symbol) and not isinstance(s, sp.Dummy):
            found.setdefault(str(s), s)
    return found


def sympy_function(expr: sp.Basic, dims: Mapping[sp.Symbol, int]) -> Callable[[Mapping], object]:
    """A NumPy function of a dict of values (by name) computing ``expr`` the SymPy way.

    ``expr`` may be a scalar or a matrix expression in the dimension symbols ``dims``.
    The result is a float for a scalar and a 2-d array for a matrix.
    """
    expr = sp.sympify(expr)
    # Idx carries its range: after binding dims the summand's Idx and the Sum's would differ.
    plain = {i: sp.Symbol(str(i.label), integer=True) for i in expr.atoms(sp.Idx)}
    body = explicit(expr.xreplace(plain), dims)
    if isinstance(body, sp.MatrixBase):
        body = sp.ImmutableMatrix(body)
    # Symbols of the Indexed entries after the expansion (IndexedBase labels, MatrixSymbols).
    symbols = _array_symbols(body)
    names = sorted(symbols)
    fn = sp.lambdify([symbols[k] for k in names], body, modules=[NUMPY_REFERENCE, "numpy"])
    is_matrix = isinstance(body, sp.MatrixBase)

    def call(values: Mapping) -> object:
        args = [np.asarray(values[k], dtype=np.float64) if np.ndim(values[k])
                else float(values[k]) for k in names]
        out = fn(*args)
        if is_matrix:
            return np.asarray(out, dtype=np.float64).reshape(body.shape)
        return float(out)

    return call
