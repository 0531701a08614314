"""Extreme logits: value and gradient of every loss stay finite and accurate.

The reference is independent of symdl's IR: the SymPy definition is written out at concrete
small sizes (``doit`` on the explicit sums), differentiated entry by entry with SymPy and
evaluated at 50 digits (mpmath through ``evalf``). float64 kernels must agree to a relative
error of 1e-10 (max-norm, relative to the largest reference entry, or to ``TINY``) for logits
up to ±1000; float32 kernels must stay finite for logits up to ±80.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import registry

SIZES = 2, 3  # rows, columns of the logits
DIGITS = 50
TINY = 1e-30
"""Below this magnitude the error is measured against it: a value of 1e-59 that float64
computes as a difference of order-one terms (a KL divergence of nearly equal distributions)
is 0.0 to every float64 algorithm."""


def _vocabulary_cases():
    n, c = sp.symbols("n c", integer=True, positive=True)
    Z = sp.MatrixSymbol("Z", n, c)
    Y = sp.MatrixSymbol("Y", n, c)
    return {
        "softmax_cross_entropy": (symdl.softmax_cross_entropy(Z, Y), Z),
        "binary_cross_entropy_with_logits": (symdl.binary_cross_entropy_with_logits(Z, Y), Z),
        "mse": (symdl.mse(Z, Y), Z),
        "log_softmax": (symdl.total(symdl.log_softmax(Z)), Z),
        "logsumexp": (symdl.total(symdl.logsumexp(Z)), Z),
    }


def _registry_cases():
    cases = {}
    for name in registry.names():
        logits = getattr(importlib.import_module(f"symdl.derivations.{name}"), "LOGITS", None)
        if logits is not None:
            cases[f"derivations.{name}"] = (name, logits)
    return cases


VOCABULARY = _vocabulary_cases()
REGISTRY = _registry_cases()


def _single_expression(der: symdl.Derivation) -> sp.Basic:
    expr = der.steps[-1][1]
    for symbol, definition in reversed(der.steps[:-1]):
        expr = expr.xreplace({symbol: definition})
    return expr


def _setup(der: symdl.Derivation, logits_name: str, scale: float, dtype, seed: int):
    rng = np.random.default_rng(seed)
    dims = sorted(der.dims, key=str)
    leaves = der.leaves
    logits_leaf = leaves[logits_name]
    sizes = dict.fromkeys(dims, SIZES[1])
    if len(logits_leaf.shape) == 2 and isinstance(logits_leaf.shape[0], sp.Symbol):
        sizes[logits_leaf.shape[0]] = SIZES[0]
    values = {}
    for name, leaf in leaves.items():
        shape = tuple(int(sp.sympify(s).subs(sizes)) for s in leaf.shape)
        if name == logits_name:
            array = scale * rng.uniform(-1, 1, shape)
            array.flat[0] = scale
            array.flat[-1] = -scale
        else:
            array = rng.uniform(0.05, 1.0, shape)  # labels, targets, weights: probabilities
            if len(shape) == 2 and shape[-1] > 1:
                array /= array.sum(axis=1, keepdims=True)
        values[name] = array.astype(dtype) if shape else float(array)
    return sizes, values


def _expand_sum(total: sp.Sum) -> sp.Basic:
    """Writes a sum over concrete ranges out term by term."""
    terms = [total.function]
    for index, low, high in total.limits:
        terms = [t.xreplace({index: sp.Integer(k)}) for t in terms
                 for k in range(int(low), int(high) + 1)]
    return sp.Add(*terms)


def _reference(expr: sp.Basic, sizes, values, logits_name):
    explicit = expr.subs(sizes).doit()
    if isinstance(explicit, sp.MatrixBase):
        explicit = explicit[0, 0]
    explicit = explicit.replace(lambda e: isinstance(e, sp.Sum), _expand_sum)
    substitutions = {}
    entries = []
    for element in explicit.atoms(sp.matrices.expressions.matexpr.MatrixElement):
        name = str(element.parent.name)
        i, j = int(element.i), int(element.j)
        substitutions[element] = sp.Float(repr(float(values[name][i, j])), DIGITS + 10)
        if name == logits_name:
            entries.append((element, (i, j)))
    for symbol in explicit.free_symbols:
        if isinstance(symbol, sp.Symbol) and str(symbol) in values:
            substitutions[symbol] = sp.Float(repr(float(values[str(symbol)])), DIGITS + 10)
    value = float(explicit.xreplace(substitutions).evalf(DIGITS))
    grad = np.zeros(values[logits_name].shape)
    for element, (i, j) in entries:
        grad[i, j] = float(sp.diff(explicit, element).xreplace(substitutions).evalf(DIGITS))
    return value, grad


def _check(der, expr, logits_name, seed):
    kernel = der.compile()
    for scale in (1000.0, 30.0):
        sizes, values = _setup(der, logits_name, scale, np.float64, seed)
        result = kernel(**values)
        value, grad = _reference(expr, sizes, values, logits_name)
        assert np.isfinite(result.value) and np.all(np.isfinite(result.grad[logits_name]))
        assert abs(result.value - value) <= 1e-10 * max(abs(value), TINY), (scale, value)
        error = np.max(np.abs(result.grad[logits_name] - grad))
        assert error <= 1e-10 * max(np.max(np.abs(grad)), TINY), (scale, error)
    sizes, values = _setup(der, logits_name, 80.0, np.float32, seed)
    result = kernel(**values)
    assert np.isfinite(result.value) and np.all(np.isfinite(result.grad[logits_name]))


@pytest.mark.parametrize("name", list(VOCABULARY))
def test_vocabulary_loss_extreme_logits(name):
    expr, logits = VOCABULARY[name]
    der = symdl.derive(expr, wrt=[logits])
    _check(der, expr, "Z", seed=len(name))


@pytest.mark.parametrize("case", list(REGISTRY))
def test_shipped_loss_extreme_logits(case):
    name, logits_name = REGISTRY[case]
    der = registry.load(name).derive()
    params = {str(getattr(p, "name", p)) for p in der.wrt}
    if logits_name not in params:
        leaf = der.leaves[logits_name]
        der = symdl.derive(list(der.steps) if len(der.steps) > 1 else der.steps[-1][1],
                           wrt=[leaf.symbol])
    _check(der, _single_expression(der), logits_name, seed=len(name))
