"""NumPy evaluation of the IR: the reference every derived formula is checked against.

It evaluates a node for concrete arrays and concrete dimensions. Softmax and log-sum-exp use
the max shift; sigmoid and softplus use their stable NumPy forms. Einsums go to
``numpy.einsum`` with an optimised contraction order. Each node kind has one rule in the
table ``EVALUATE``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from symdl import ir
from symdl.errors import EvaluationError
from symdl.ir import rewrites
from symdl.ir.assumptions import violation
from symdl.ir.matrix_functions import matrix_function_value
from symdl.ir.rules import Rules
from symdl.primitives.registry import numpy_function

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _lambdified(fn: sp.Lambda, cache: dict) -> object:
    key = id(fn)
    if key not in cache:
        cache[key] = _numpy_function(fn)
    return cache[key]


@functools.lru_cache(maxsize=4096)
def _numpy_function(fn: sp.Lambda) -> object:
    # By the function itself, across evaluations: finite differences of a recurrence evaluate
    # the same step functions hundreds of times, and lambdify costs more than the arithmetic.
    return numpy_function(fn.variables, fn.expr)


@dataclass
class _Evaluation:
    """What the rules read: the leaf values, the dimension sizes and the values computed."""

    values: Mapping[str, np.ndarray | float]
    dim_subs: dict
    results: dict[int, np.ndarray] = field(default_factory=dict)
    fn_cache: dict = field(default_factory=dict)
    bound: dict = field(default_factory=dict)
    """Dimension and coefficient values by expression (``_bound``): a scan evaluates its step's
    nodes once per step, and SymPy's ``subs`` would dominate."""

    def __getitem__(self, node: ir.Node) -> np.ndarray:
        return self.results[id(node)]

    def size(self, d: sp.Expr) -> int:
        value = self._bound(d)
        if not value.is_Integer:
            raise EvaluationError(f"dimension {d} is not bound to a size; pass it in dims")
        return int(value)

    def _bound(self, e: sp.Expr) -> sp.Expr:
        # Memoised: a graph has few distinct dimensions and coefficients, but reads them at
        # every node, and SymPy's subs was most of the time of an evaluation (rank-4 attention).
        key = e if isinstance(e, sp.Basic) else sp.sympify(e)
        found = self.bound.get(key)
        if found is None:
            found = self.bound[key] = key.subs(self.dim_subs)
        return found

    def number(self, c: sp.Expr) -> float:
        value = self._bound(c)
        try:
            return float(value)
        except TypeError as exc:
            raise EvaluationError(f"coefficient {c} is not a number after binding dims") from exc


EVALUATE: Rules[Callable[[ir.Node, _Evaluation, tuple[int, ...]], object]] = Rules(
    "NumPy evaluation")
"""node kind -> (node, the evaluation so far, concrete shape) -> the node's value."""


def evaluate(
    roots: list[ir.Node],
    values: Mapping[str, np.ndarray | float],
    dims: Mapping[sp.Symbol, int],
) -> list[np.ndarray]:
    """Evaluates ``roots`` for leaf ``values`` (by leaf name) and dimension sizes ``dims``."""
    dim_subs = {sp.Symbol(str(k), **k.assumptions0) if isinstance(k, str) else k: v
                for k, v in dims.items()}
    ev = _Evaluation(values, dim_subs)
    requested = list(roots)
    roots = rewrites.exact(requested)  # the same values, computed without cancellation
    for node in ir.topological_order(list(roots)):
        shape = tuple(ev.size(d) for d in node.shape)
        ev.results[id(node)] = np.asarray(EVALUATE(node, ev, shape), dtype=float).reshape(shape)
    return [ev[r] for r in roots]


@EVALUATE.register(ir.Leaf)
def _leaf(node: ir.Leaf, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    if node.name not in ev.values:
        raise EvaluationError(f"no value given for {node.name} (shape {node.shape})")
    try:
        value = np.asarray(ev.values[node.name], dtype=float)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(
            f"{node.name} cannot be read as an array of real numbers ({exc}); pass a "
            "float64 NumPy array") from exc
    if (message := violation(node.symbol, value)) is not None:
        raise EvaluationError(message)
    if value.shape != shape:
        value = value.reshape(shape) if value.size == int(np.prod(shape)) else value
    if value.shape != shape:
        raise EvaluationError(
            f"{node.name} should have shape {shape} ({node.shape}), got {value.shape}"
        )
    return value


@EVALUATE.register(ir.Ones)
def _ones(node: ir.Ones, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape)


@EVALUATE.register(ir.Zero)
def _zero(node: ir.Zero, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape)


@EVALUATE.register(ir.Identity)
def _identity(node: ir.Identity, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    return np.eye(shape[0])


@EVALUATE.register(ir.Named)
def _named(node: ir.Named, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    return ev[node.body]


@EVALUATE.register(ir.Add)
def _add(node: ir.Add, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    return sum(ev[t] for t in node.terms)


@EVALUATE.register(ir.Map)
def _map(node: ir.Map, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    fn = _lambdified(node.fn, ev.fn_cache)
    return np.broadcast_to(fn(*[ev[a] for a in node.args]), shape).astype(float)


@EVALUATE.register(ir.Einsum)
def _einsum(node: ir.Einsum, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    letters = {lab: _LETTERS[k] for k, lab in enumerate(node.label_dims())}
    subscripts = ",".join("".join(letters[lab] for lab in s) for s in node.specs)
    subscripts += "->" + "".join(letters[lab] for lab in node.out)
    arrays = [ev[op] for op in node.operands]
    product = np.einsum(subscripts, *arrays, optimize=True) if arrays else np.array(1.0)
    return ev.number(node.coeff) * product


@EVALUATE.register(ir.LogSumExp)
def _logsumexp(node: ir.LogSumExp, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    z = ev[node.arg]
    m = np.max(z, axis=node.axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):  # a lane of only -inf: log 0 = -inf, its value
        return m + np.log(np.sum(np.exp(z - m), axis=node.axis, keepdims=True))


@EVALUATE.register(ir.Softmax)
def _softmax(node: ir.Softmax, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    z = ev[node.arg]
    m = np.max(z, axis=node.axis, keepdims=True)
    # The shift ignores -inf (masked entries); a lane of only -inf is all zeros, not NaN.
    e = np.exp(z - np.where(np.isfinite(m), m, 0.0))
    total = np.sum(e, axis=node.axis, keepdims=True)
    return e / np.where(total > 0, total, np.inf)


GRAM_PIVOT_TOLERANCE = 100
"""A Gram matrix ``A^T A`` whose smallest Cholesky pivot squared is below this times its size
times the machine epsilon times the largest is numerically singular: ``A`` has lost rank, or
has a condition number beyond about 1e7, where ``(A^T A)^{-1}`` keeps no correct digit. Over
2,000 random rank-deficient matrices (up to 60 x 30) every one is caught, and no full-rank
matrix of condition number 1e6 is."""


@EVALUATE.register(ir.Solve)
def _solve(node: ir.Solve, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    a, b = ev[node.a], ev[node.b]
    if node.spd:
        try:
            lower = np.linalg.cholesky(a)
            pivots = np.abs(np.diag(lower))
            # A rank-deficient matrix's Gram matrix often factors, with a pivot at rounding
            # level: below GRAM_PIVOT_TOLERANCE * size * eps of the largest, it is singular.
            if pivots.min() ** 2 <= (GRAM_PIVOT_TOLERANCE * pivots.size * np.finfo(float).eps
                                     * pivots.max() ** 2):
                raise np.linalg.LinAlgError("a Cholesky pivot at rounding level")
        except np.linalg.LinAlgError as exc:
            raise EvaluationError(
                f"the Gram matrix of a pseudo-inverse is numerically singular ({exc}): the "
                "matrix does not have full rank (pinv assumes full column rank for a tall "
                "matrix, full row rank for a wide one); regularise it or drop collinear "
                "columns") from exc
        y = np.linalg.solve(lower, b.reshape(b.shape[0], -1))
        return np.linalg.solve(lower.T, y).reshape(b.shape)
    try:
        return np.linalg.solve(a, b.reshape(b.shape[0], -1)).reshape(b.shape)
    except np.linalg.LinAlgError as exc:
        raise EvaluationError(
            f"the matrix of a linear solve or an inverse is singular ({exc}); use a "
            "regularised system (add lambda I) or the pseudo-inverse outside symdl"
        ) from exc


@EVALUATE.register(ir.Det)
def _det(node: ir.Det, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    a = ev[node.a]
    if node.spd:
        try:
            # The symmetric part: Cholesky reads one triangle, and the derivative A^{-T}
            # counts both (a finite difference of one off-diagonal entry agrees with it).
            logdet = 2.0 * np.sum(np.log(np.diag(np.linalg.cholesky((a + a.T) / 2))))
        except np.linalg.LinAlgError as exc:
            raise EvaluationError(
                f"a determinant declared symmetric positive definite (spd=True) got a matrix "
                f"that is not ({exc}); drop spd=True or pass a positive definite matrix"
            ) from exc
        sign = 1.0
    else:
        sign, logdet = np.linalg.slogdet(a)
        if node.log and (sign == 0 or not np.isfinite(logdet)):
            raise EvaluationError(
                "the matrix of a determinant is singular (determinant 0), so its log and the "
                "derivatives (through A^{-1}) do not exist; regularise it (add lambda I)")
    return np.asarray(logdet if node.log else sign * np.exp(logdet))


@EVALUATE.register(ir.MatrixFunction)
def _matrix_function(node: ir.MatrixFunction, ev: _Evaluation,
                     shape: tuple[int, ...]) -> np.ndarray:
    try:
        return matrix_function_value(node.kind, np.asarray(ev[node.a]))
    except np.linalg.LinAlgError as exc:
        raise EvaluationError(str(exc)) from exc



# ---------------------------------------------------------------------------------------------
# Computed positions (symdl.ir.indexed)


def _positions(index: tuple, shape: tuple[int, ...], ev: _Evaluation) -> list[np.ndarray]:
    """For each affine map, its position at every point of ``shape`` (integer arrays)."""
    grid = np.indices(shape, dtype=np.int64) if shape else np.zeros((0,), dtype=np.int64)
    found = []
    for m in index:
        pos = np.full(shape, int(ev.size(m.offset)), dtype=np.int64)
        for k, c in enumerate(m.coeffs):
            if c != 0:
                pos = pos + int(ev.size(c)) * grid[k]
        found.append(pos)
    return found


def _inside(positions: list[np.ndarray], bounds: tuple[int, ...], shape) -> np.ndarray:
    inside = np.ones(shape, dtype=bool)
    for pos, bound in zip(positions, bounds, strict=True):
        inside &= (pos >= 0) & (pos < bound)
    return inside


@EVALUATE.register(ir.AffineRead)
def _affine_read(node: ir.AffineRead, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    source = ev[node.arg]
    positions = _positions(node.index, shape, ev)
    inside = _inside(positions, source.shape, shape)
    clipped = tuple(np.where(inside, p, 0) for p in positions)
    return np.where(inside, source[clipped] if source.ndim else source, 0.0)


@EVALUATE.register(ir.AffineScatter)
def _affine_scatter(node: ir.AffineScatter, ev: _Evaluation,
                    shape: tuple[int, ...]) -> np.ndarray:
    source = ev[node.arg]
    positions = _positions(node.index, source.shape, ev)
    inside = _inside(positions, shape, source.shape)
    result = np.zeros(shape)
    np.add.at(result, tuple(p[inside] for p in positions), source[inside])
    return result


def _integer_positions(node: ir.Node, ev: _Evaluation, rows: int) -> np.ndarray:
    """The values of an index array as integers, checked to lie in ``0 .. rows - 1``."""
    values = ev[node]
    as_int = np.rint(values).astype(np.int64)
    if values.size and not np.array_equal(as_int, values):
        raise EvaluationError(
            f"{getattr(node, 'name', 'an index array')} holds non-integer values (such as "
            f"{values[as_int != values].flat[0]}); pass an integer array")
    bad = (as_int < 0) | (as_int >= rows)
    if bad.any():
        raise EvaluationError(
            f"{getattr(node, 'name', 'an index array')} holds the index "
            f"{as_int[bad].flat[0]} at position {tuple(int(i) for i in np.argwhere(bad)[0])}, "
            f"outside 0 .. {rows - 1} (the table has {rows} rows)")
    return as_int


@EVALUATE.register(ir.Take)
def _take(node: ir.Take, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    table = ev[node.table]
    return table[_integer_positions(node.indices, ev, table.shape[0])]


@EVALUATE.register(ir.TakeAdjoint)
def _take_adjoint(node: ir.TakeAdjoint, ev: _Evaluation,
                  shape: tuple[int, ...]) -> np.ndarray:
    result = np.zeros(shape)
    np.add.at(result, _integer_positions(node.indices, ev, shape[0]), ev[node.arg])
    return result


@EVALUATE.register(ir.Max)
def _max(node: ir.Max, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    return np.max(ev[node.arg], axis=node.axis, keepdims=True)


@EVALUATE.register(ir.ArgMaxMask)
def _argmax_mask(node: ir.ArgMaxMask, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    values = ev[node.arg]
    first = np.expand_dims(np.argmax(values, axis=node.axis), node.axis)  # first on ties
    mask = np.zeros(shape)
    np.put_along_axis(mask, first, 1.0, axis=node.axis)
    return mask



@EVALUATE.register(ir.Scan)
def _scan(node: ir.Scan, ev: _Evaluation, shape: tuple[int, ...]) -> np.ndarray:
    # A loop over t around the step graph, which is rewritten and ordered once; the
    # placeholders and the closure are bound by node, not by name.
    roots = rewrites.exact(node.body_roots())
    order = ir.topological_order(roots, stop=list(node.closure) + list(node.placeholders()))
    fixed = dict(ev.results)  # the closure, and whatever the body's rewriting reaches
    length = ev.size(node.length)
    carries = [ev[i] for i in node.init]
    outputs = []
    steps = range(length - 1, -1, -1) if node.reverse else range(length)
    for t in steps:
        inner = _Evaluation(ev.values, ev.dim_subs, dict(fixed), ev.fn_cache, ev.bound)
        for placeholder, value in zip(node.carry, carries, strict=True):
            inner.results[id(placeholder)] = value
        for slot, seq, lag, bound in zip(node.slots, node.seqs, node.lags, node.bounds,
                                         strict=True):
            read = t - lag
            inner.results[id(slot)] = ev[seq][read] if read >= 0 else ev[bound]
        for n in order:
            if id(n) not in inner.results:
                n_shape = tuple(inner.size(d) for d in n.shape)
                inner.results[id(n)] = np.asarray(
                    EVALUATE(n, inner, n_shape), dtype=float).reshape(n_shape)
        if node.mode != "final":
            outputs.append(inner[roots[-1]])
        carries = [inner[r] for r in roots[:-1]]
    if node.mode == "final":
        return carries[node.carry.index(node.emit)]
    if node.mode == "sum":
        return np.sum(outputs, axis=0) if outputs else np.zeros(shape)
    if node.reverse:
        outputs.reverse()
    return np.stack(outputs) if outputs else np.zeros(shape)
