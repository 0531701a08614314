"""An independent reference for checks: SymPy itself evaluates a definition.

Bind the dimension symbols to integers, expand every matrix expression into explicit entries
(structurally, from each node's mathematical definition: softmax and log-sum-exp included)
and compile with ``sympy.lambdify`` over NumPy. Nothing here uses symdl's IR, autodiff,
evaluator or code generator, so a kernel compared with it is compared with the *definition*.
``modules=COMPLEX_REFERENCE`` evaluates the same expansion on complex arrays (complex step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

# Only the classes, to recognise the nodes; their meaning is re-derived in ``explicit``.
from symdl.vocabulary import LogSumExp, Softmax, Total

NUMPY_REFERENCE: dict[str, Callable] = {
    # Written here, not imported from symdl.functions, so the reference shares no code.
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

NOT_COMPLEX_STEPPABLE = ("relu", "Heaviside", "Abs", "Max", "Min", "sign", "DiracDelta",
                         "floor", "ceiling", "erf")
"""Functions without an analytic continuation here (kinks, ``max``): no complex step."""


def explicit(e: sp.Basic, dims: Mapping[sp.Symbol, int],
             known: Mapping[str, sp.MatrixBase] | None = None,
             hoisted: dict[str, sp.MatrixBase] | None = None) -> sp.Basic:
    """``e`` with its dimensions bound and every matrix expression written out entry by entry.

    Args:
        e: a scalar or matrix SymPy expression.
        dims: sizes of the dimension symbols.
        known: explicit matrices for MatrixSymbols by name (earlier steps of a model).
        hoisted: when given, an entry ``M[i, j]`` of a matrix expression at symbolic indices
            (an index form's free indices) reads a new MatrixSymbol instead, and ``hoisted``
            maps its name to ``M`` written out. Otherwise the whole explicit ``M`` would be
            printed again at every such entry (tens of seconds to lambdify a Hessian block).
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

    def go(e: sp.Basic) -> sp.Basic:
        if isinstance(e, Total):
            return sp.Add(*go(e.arg))
        if isinstance(e, sp.Trace):
            return go(e.arg).trace()
        if isinstance(e, MatrixExpr):
            return sp.ImmutableMatrix(matrix(e))
        if isinstance(e, sp.Sum):
            return go(_expand_sum(e.subs(dims)))
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
        if not e.args or isinstance(e, (sp.Indexed, sp.IndexedBase, sp.Lambda)):
            return e
        return e.func(*[go(a) for a in e.args])

    def hoist(parent: MatrixExpr) -> sp.MatrixSymbol:
        if parent not in hoisted_names:
            name = f"{prefix}{len(hoisted)}"
            entries = matrix(parent)
            hoisted[name] = entries
            hoisted_names[parent] = sp.MatrixSymbol(name, entries.rows, entries.cols)
        return hoisted_names[parent]

    built: dict[MatrixExpr, sp.MatrixBase] = {}

    def matrix(e: MatrixExpr) -> sp.MatrixBase:
        # A subexpression used several times (softmax in its own derivative) is built once.
        if e not in built:
            built[e] = build(e)
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
    # a Sum or Lambda is left, its bound variables are not inputs (a second walk).
    atoms = e.atoms(sp.MatrixSymbol, sp.Indexed, sp.Symbol, sp.Sum, sp.Lambda)
    if any(isinstance(a, (sp.Sum, sp.Lambda)) for a in atoms):
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
        atoms = body.atoms(sp.Function, sp.Max, sp.Min, sp.Abs)
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
    # are no identifiers, ``x0`` is a name lambdify's CSE gives its temporaries. Every
    # argument is therefore renamed to a generated identifier; values are still read by the
    # user's name.
    renamed = {symbols[k]: _generated_symbol(symbols[k], f"_symdl_arg{i}")
               for i, k in enumerate(names)}
    indices = [sp.Symbol(f"_symdl_index{i}", integer=True) for i in range(len(extra_args))]
    renamed.update(zip(extra_args, indices, strict=True))
    body = body.xreplace(renamed)
    modules = [COMPLEX_REFERENCE if complex_valued else NUMPY_REFERENCE, "numpy"]
    fn = sp.lambdify([renamed[symbols[k]] for k in names] + indices, body, modules=modules,
                     cse=True)
    kind = np.complex128 if complex_valued else np.float64
    is_matrix = isinstance(body, sp.MatrixBase)

    def call(values: Mapping, *extra) -> object:
        args = [np.asarray(values[k], dtype=kind) if np.ndim(values[k])
                else kind(np.asarray(values[k]).reshape(())) for k in names]
        out = fn(*args, *extra)
        if is_matrix:
            return np.asarray(out, dtype=kind).reshape(body.shape)
        return kind(out)

    return call


def _generated_symbol(s: sp.Basic, name: str) -> sp.Basic:
    """``s`` (a MatrixSymbol, IndexedBase or Symbol) under the identifier ``name``."""
    if isinstance(s, sp.MatrixSymbol):
        return sp.MatrixSymbol(name, *s.shape)
    if isinstance(s, sp.IndexedBase):
        return sp.IndexedBase(name, shape=s.shape)
    return sp.Symbol(name, **s.assumptions0)


def sympy_function(expr: sp.Basic, dims: Mapping[sp.Symbol, int]) -> Callable[[Mapping], object]:
    """A NumPy function of a dict of values (by name) computing ``expr`` the SymPy way.

    ``expr`` may be a scalar or a matrix expression in the dimension symbols ``dims``.
    The result is a float for a scalar and a 2-d array for a matrix.
    """
    expr = sp.sympify(expr)
    # Idx carries its range: after binding dims the summand's Idx and the Sum's would differ.
    plain = {i: sp.Symbol(str(i.label), integer=True) for i in expr.atoms(sp.Idx)}
    return lambdified(explicit(expr.xreplace(plain), dims))


def index_form_function(form, dims: Mapping[sp.Symbol, int],
                        complex_valued: bool = False) -> Callable[[Mapping], np.ndarray]:
    """A NumPy function evaluating an ``IndexForm`` entry by entry (its free indices are
    passed as integers), for small sizes; the result has the form's shape."""
    plain = {i: sp.Symbol(str(i.label), integer=True) for i in form.expr.atoms(sp.Idx)}
    indices = tuple(plain.get(i, i) for i in form.indices)
    expr = form.expr.xreplace(plain)
    hoisted: dict[str, sp.MatrixBase] = {}
    body = explicit(expr, dims, hoisted=hoisted)
    entry = lambdified(body, complex_valued, extra_args=indices)
    matrices = {name: lambdified(m, complex_valued) for name, m in hoisted.items()}
    shape = tuple(int(sp.sympify(s).subs(dims)) for s in form.shape)

    def call(values: Mapping) -> np.ndarray:
        env = dict(values)
        env.update({name: fn(values) for name, fn in matrices.items()})
        out = np.empty(shape, dtype=np.complex128 if complex_valued else np.float64)
        for idx in np.ndindex(*shape):
            out[idx] = entry(env, *idx)
        return out

    return call


def _step_name(symbol: sp.Basic | None) -> str | None:
    if symbol is None:
        return None
    return str(symbol.name) if isinstance(symbol, sp.MatrixSymbol) else str(symbol)


class Chain:
    """Evaluates a list of equations in order, each one explicit and lambdified on its own:
    later equations read earlier results by name, so nothing is inlined (an inlined
    gradient repeats the forward pass in every entry and takes minutes to lambdify)."""

    def __init__(self, steps, dims: Mapping[sp.Symbol, int], complex_valued: bool = False):
        self.bodies: list[sp.Basic] = []
        self._fns: list[tuple[str | None, Callable]] = []
        for symbol, expr in steps:
            if hasattr(expr, "indices"):
                fn = index_form_function(expr, dims, complex_valued)
                self.bodies.append(expr.expr)
            else:
                expr = sp.sympify(expr)
                plain = {i: sp.Symbol(str(i.label), integer=True) for i in expr.atoms(sp.Idx)}
                body = explicit(expr.xreplace(plain), dims)
                self.bodies.append(body)
                fn = lambdified(body, complex_valued)
            self._fns.append((_step_name(symbol), fn))

    def __call__(self, values: Mapping) -> tuple[dict, object]:
        env = dict(values)
        result = None
        for name, fn in self._fns:
            result = fn(env)
            if name is not None:
                env[name] = result
        return env, result


def _expand_sum(e: sp.Sum) -> sp.Basic:
    """A sum over concrete ranges written out term by term. ``Sum.doit`` would look for a
    closed form first (partial fractions, ...), which took minutes on some random
    definitions of the property tests."""
    terms = [e.function]
    for var, lo, hi in e.limits:
        if not (lo.is_Integer and hi.is_Integer):
            return e.doit()
        terms = [t.xreplace({var: sp.Integer(k)}) for t in terms
                 for k in range(int(lo), int(hi) + 1)]
    return sp.Add(*terms)
