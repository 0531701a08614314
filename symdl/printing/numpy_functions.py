"""A derivation's results as plain NumPy functions (``Derivation.lambdify``): no Numba.

Each result SymPy prints (the value, each gradient, each Hessian block) becomes a function
made by ``sympy.lambdify`` that takes the inputs by the names of their symbols and infers
the sizes of the dimension symbols from the arrays' shapes. Results in matrix form run as
whole-array NumPy (``X.T @ (sigmoid(X @ w) - y) / n``); a Hessian block of a matrix
parameter, which has four indices (an ``IndexForm``), is filled entry by entry
(``IndexForm.lambdify``): meant for small sizes; ``der.compile()`` is the fast path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from symdl.errors import EvaluationError
from symdl.ir.keys import Gradient, HessianBlock, Value
from symdl.printing.to_sympy import IndexForm


@dataclass(frozen=True)
class NumpyFunction:
    """One result as a NumPy function of the inputs, by name: ``f(X=X, w=w, y=y)``.

    Attributes:
        expr: the SymPy result it computes (``IndexForm`` for a four-index block).
        input_names: the inputs it takes (every input of the derivation).
        shape: the result's symbolic shape (``()`` for a scalar).
    """

    expr: sp.Basic | IndexForm
    input_names: tuple[str, ...]
    shape: tuple
    _symbols: Mapping[str, sp.Basic] = field(repr=False)
    _function: Callable = field(repr=False)
    _arguments: tuple = field(repr=False)

    def __call__(self, **arrays: object) -> float | np.ndarray:
        values, dims = _bind(self._symbols, arrays)
        got = self._function(*[dims[a] if a in dims else values[_name(a)]
                               for a in self._arguments])
        concrete = tuple(int(sp.sympify(d).xreplace(dims)) for d in self.shape)
        if not concrete:
            return float(np.real_if_close(np.asarray(got, dtype=float)).reshape(()))
        got = np.asarray(got, dtype=float)
        if got.size == int(np.prod(concrete)):
            # The kernels' layout: size-1 axes of a Hessian block dropped (d x 1 -> d).
            return got.reshape(concrete)
        return np.broadcast_to(got, concrete).copy()  # a constant (a number for a matrix)

    @property
    def source(self) -> str:
        """The NumPy code ``sympy.lambdify`` generated (for a matrix-form result)."""
        try:
            return inspect.getsource(self._function)
        except (OSError, TypeError):
            return f"# entry by entry: {self.expr}"


@dataclass(frozen=True)
class NumpyFunctions:
    """A derivation's value, gradients and Hessian blocks as NumPy functions.

    Attributes:
        value: the definition's value.
        grad: each parameter's gradient, by name.
        hessian: the Hessian blocks by ``(p, q)`` names.
        input_names: the inputs every function takes, by keyword.
    """

    value: NumpyFunction
    grad: dict[str, NumpyFunction]
    hessian: dict[tuple[str, str], NumpyFunction]
    input_names: tuple[str, ...]

    def __call__(self, **arrays: object) -> dict[str, float | np.ndarray]:
        """Every result by the kernels' output names (``"value"``, ``"grad:w"``,
        ``"hessian:w,w"``)."""
        results = {Value(): self.value(**arrays)}
        results.update({Gradient(p): f(**arrays) for p, f in self.grad.items()})
        results.update({HessianBlock(p, q): f(**arrays) for (p, q), f in self.hessian.items()})
        return results


def numpy_functions(value: sp.Basic | IndexForm, grads: Mapping[str, sp.Basic | IndexForm],
                    hessians: Mapping[tuple[str, str], sp.Basic | IndexForm],
                    symbols: Mapping[str, sp.Basic], shapes: Mapping[str, tuple]
                    ) -> NumpyFunctions:
    """NumPy functions of printed results.

    Args:
        value: the printed value.
        grads: the printed gradient of each parameter, by name.
        hessians: the printed Hessian blocks, by ``(p, q)``.
        symbols: the SymPy symbol of every input, by name (``MatrixSymbol``,
            ``IndexedBase`` with a shape, or a scalar ``Symbol``).
        shapes: the symbolic shape of each result, by output key (``Value()``,
            ``Gradient(p)``, ``HessianBlock(p, q)``).
    """
    symbols = dict(symbols)

    def one(expr: sp.Basic | IndexForm, shape: tuple) -> NumpyFunction:
        return _function(expr, shape, symbols)

    return NumpyFunctions(
        one(value, shapes[Value()]),
        {p: one(e, shapes[Gradient(p)]) for p, e in grads.items()},
        {pq: one(e, shapes[HessianBlock(*pq)]) for pq, e in hessians.items()},
        tuple(symbols))


def _name(symbol: sp.Basic) -> str:
    if isinstance(symbol, sp.IndexedBase):
        return str(symbol.label)
    return str(getattr(symbol, "name", symbol))


def _function(expr: sp.Basic | IndexForm, shape: tuple,
              symbols: dict[str, sp.Basic]) -> NumpyFunction:
    names = set(symbols)
    if isinstance(expr, IndexForm):
        free = set(expr.expr.free_symbols) - set(expr.indices)
    else:
        free = set(expr.free_symbols)
    for dim in shape:
        free |= sp.sympify(dim).free_symbols
    # The inputs the formula reads, then the dimension symbols it reads (n in X.T*G/n).
    inputs = [symbols[n] for n in symbols
              if symbols[n] in free or any(s.name == n for s in free if hasattr(s, "name"))]
    dims = sorted((s for s in free if isinstance(s, sp.Symbol) and s.is_integer
                   and _name(s) not in names), key=str)
    if isinstance(expr, IndexForm):
        # Every input: its sizes may come from an array the entry does not read (the
        # identity block of an L2 penalty reads no array of size d but w).
        arguments = tuple(symbols.values())
        function = expr.lambdify(list(arguments))
    else:
        arguments = tuple(inputs + dims)
        function = sp.lambdify(list(arguments), expr, "numpy")
    return NumpyFunction(expr, tuple(symbols), tuple(shape), symbols, function, arguments)


def _bind(symbols: Mapping[str, sp.Basic], arrays: Mapping[str, object]
          ) -> tuple[dict[str, object], dict[sp.Basic, int]]:
    """The arrays as float arrays (numbers for scalars) and the dimension sizes they give."""
    missing = [n for n in symbols if n not in arrays]
    unknown = sorted(set(arrays) - set(symbols))
    if missing or unknown:
        raise EvaluationError(
            (f"missing arguments {missing}" if missing else f"unexpected arguments {unknown}")
            + f"; these functions take {', '.join(f'{n}=...' for n in symbols)}")
    values: dict[str, object] = {}
    dims: dict[sp.Basic, int] = {}
    where: dict[sp.Basic, str] = {}
    for name, symbol in symbols.items():
        try:
            array = np.asarray(arrays[name], dtype=float)
        except (TypeError, ValueError) as exc:
            raise EvaluationError(
                f"{name} cannot be read as a float array ({exc}); pass a NumPy array") from exc
        symbolic = tuple(getattr(symbol, "shape", None) or ())
        if len(symbolic) != array.ndim:
            raise EvaluationError(
                f"{name} must have {len(symbolic)} axes, shape {symbolic}; got shape "
                f"{array.shape}" + (" (reshape a vector to a column with .reshape(-1, 1))"
                                    if array.ndim == 1 and len(symbolic) == 2 else ""))
        for dim, size in zip(symbolic, array.shape, strict=True):
            dim = sp.sympify(dim)
            if isinstance(dim, sp.Symbol):
                where.setdefault(dim, f"{name} {array.shape}")
                if dims.setdefault(dim, size) != size:
                    raise EvaluationError(
                        f"{name} has {dim} = {size} (shape {array.shape}) but {where[dim]} has "
                        f"{dim} = {dims[dim]}")
            elif dim.is_number and int(dim) != size:
                raise EvaluationError(f"{name} must have shape {symbolic}, got {array.shape}")
        values[name] = float(array) if not symbolic else array
    return values, dims
