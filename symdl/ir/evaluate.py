"""NumPy evaluation of the IR: the reference every derived formula is checked against.

It evaluates a node for concrete arrays and concrete dimensions. Softmax and log-sum-exp use
the max shift; sigmoid and softplus use their stable NumPy forms. Einsums go to
``numpy.einsum`` with an optimised contraction order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sympy as sp

from symdl import ir
from symdl.errors import EvaluationError
from symdl.ir import rewrites
from symdl.ir.assumptions import violation
from symdl.primitives.registry import numpy_function

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _lambdified(fn: sp.Lambda, cache: dict) -> object:
    key = id(fn)
    if key not in cache:
        cache[key] = numpy_function(fn.variables, fn.expr)
    return cache[key]


def evaluate(
    roots: list[ir.Node],
    values: Mapping[str, np.ndarray | float],
    dims: Mapping[sp.Symbol, int],
) -> list[np.ndarray]:
    """Evaluates ``roots`` for leaf ``values`` (by leaf name) and dimension sizes ``dims``."""
    dim_subs = {sp.Symbol(str(k), **k.assumptions0) if isinstance(k, str) else k: v
                for k, v in dims.items()}

    def size(d: sp.Expr) -> int:
        value = sp.sympify(d).subs(dim_subs)
        if not value.is_Integer:
            raise EvaluationError(f"dimension {d} is not bound to a size; pass it in dims")
        return int(value)

    def number(c: sp.Expr) -> float:
        value = sp.sympify(c).subs(dim_subs)
        try:
            return float(value)
        except TypeError as exc:
            raise EvaluationError(f"coefficient {c} is not a number after binding dims") from exc

    results: dict[int, np.ndarray] = {}
    fn_cache: dict = {}
    requested = list(roots)
    roots = rewrites.exact(requested)  # the same values, computed without cancellation
    for node in ir.topological_order(list(roots)):
        shape = tuple(size(d) for d in node.shape)
        if isinstance(node, ir.Leaf):
            if node.name not in values:
                raise EvaluationError(f"no value given for {node.name} (shape {node.shape})")
            try:
                value = np.asarray(values[node.name], dtype=float)
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
            out = value
        elif isinstance(node, ir.Ones):
            out = np.ones(shape)
        elif isinstance(node, ir.Zero):
            out = np.zeros(shape)
        elif isinstance(node, ir.Identity):
            out = np.eye(shape[0])
        elif isinstance(node, ir.Named):
            out = results[id(node.body)]
        elif isinstance(node, ir.Add):
            out = sum(results[id(t)] for t in node.terms)
        elif isinstance(node, ir.Map):
            fn = _lambdified(node.fn, fn_cache)
            out = np.broadcast_to(fn(*[results[id(a)] for a in node.args]), shape).astype(float)
        elif isinstance(node, ir.Einsum):
            letters = {lab: _LETTERS[k] for k, lab in enumerate(node.label_dims())}
            subscripts = ",".join("".join(letters[lab] for lab in s) for s in node.specs)
            subscripts += "->" + "".join(letters[lab] for lab in node.out)
            arrays = [results[id(op)] for op in node.operands]
            product = np.einsum(subscripts, *arrays, optimize=True) if arrays else np.array(1.0)
            out = number(node.coeff) * product
        elif isinstance(node, ir.LogSumExp):
            z = results[id(node.arg)]
            m = np.max(z, axis=node.axis, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            out = m + np.log(np.sum(np.exp(z - m), axis=node.axis, keepdims=True))
        elif isinstance(node, ir.Softmax):
            z = results[id(node.arg)]
            e = np.exp(z - np.max(z, axis=node.axis, keepdims=True))
            out = e / np.sum(e, axis=node.axis, keepdims=True)
        elif isinstance(node, ir.Solve):
            a, b = results[id(node.a)], results[id(node.b)]
            try:
                out = np.linalg.solve(a, b.reshape(b.shape[0], -1)).reshape(b.shape)
            except np.linalg.LinAlgError as exc:
                raise EvaluationError(
                    f"the matrix of a linear solve or an inverse is singular ({exc}); use a "
                    "regularised system (add lambda I) or the pseudo-inverse outside symdl"
                ) from exc
        else:
            raise TypeError(f"cannot evaluate {type(node).__name__}")
        results[id(node)] = np.asarray(out, dtype=float).reshape(shape)
    return [results[id(r)] for r in roots]
