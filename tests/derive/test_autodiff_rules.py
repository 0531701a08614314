"""Each node kind's differentiation rules as units (``symdl.derive.autodiff.VJP`` and ``JVP``).

Every case is one node over leaf operands, with its value written again in plain NumPy (the
oracle). For each operand ``k``:

* reverse: the rule's contribution ``VJP(node, G, k)``, evaluated, is the gradient of
  ``sum(G * f(...))`` with respect to operand ``k`` by central differences of the NumPy oracle;
* forward: ``JVP(node, tangents, ())`` is the central difference of the oracle along the
  tangents (every operand moved at once, and each alone);
* forward with seed axes: ``jacobian(node, operand)`` (the identity seed carries the operand's
  axes through the rule) is the central difference of the oracle entry by entry.

Sizes are small and distinct (3, 2, 4), so a transposed or swapped axis cannot pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import sympy as sp

from symdl import ir
from symdl.derive import autodiff
from symdl.ir.evaluate import evaluate

n, d, k = sp.symbols("n d k", integer=True, positive=True)
SIZES = {n: 3, d: 2, k: 4}
STEP = 1e-6


def _leaf(name: str, *dims: sp.Expr) -> ir.Leaf:
    symbol = (sp.MatrixSymbol(name, *dims) if len(dims) == 2
              else sp.IndexedBase(name, shape=dims))
    return ir.leaf(name, dims, symbol)


A = _leaf("A_rule", n, d)
B = _leaf("B_rule", n, d)
P = _leaf("P_rule", d, k)
S = _leaf("S_rule", n, n)
R = _leaf("R_rule", n, d)
T3 = _leaf("T3_rule", n, d, k)
x, y = sp.symbols("x y", real=True)


def _einsum_diagonal(a):
    return np.diag(a)


def _lse(axis):
    def f(z):
        m = np.max(z, axis=axis, keepdims=True)
        return m + np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True))
    return f


def _softmax(axis):
    def f(z):
        e = np.exp(z - np.max(z, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)
    return f


def _solve(s, b):
    return np.linalg.solve(s, b.reshape(b.shape[0], -1)).reshape(b.shape)


# id -> (node, its NumPy value as a function of its operands' values)
CASES: dict[str, tuple[ir.Node, Callable]] = {
    "einsum-matmul": (ir.einsum([A, P], [(0, 1), (1, 2)], (0, 2), sp.Rational(3, 2)),
                      lambda a, p: 1.5 * a @ p),
    "einsum-transpose": (ir.einsum([A], [(0, 1)], (1, 0)), lambda a: a.T),
    "einsum-hadamard": (ir.einsum([A, B], [(0, 1), (0, 1)], (0, 1)), lambda a, b: a * b),
    "einsum-diagonal": (ir.einsum([S], [(0, 0)], (0,)), _einsum_diagonal),
    "einsum-total": (ir.einsum([A], [(0, 1)], (), n), lambda a: 3 * np.sum(a)),
    "einsum-broadcast": (ir.einsum([A, ir.ones((k,))], [(0, 1), (2,)], (0, 1, 2)),
                         lambda a: np.repeat(a[:, :, None], 4, axis=2)),
    "map-tanh": (ir.map_(sp.Lambda(x, sp.tanh(x)), A), np.tanh),
    "map-binary": (ir.map_(sp.Lambda((x, y), x * sp.sin(y) + y**2), A, B),
                   lambda a, b: a * np.sin(b) + b**2),
    "add": (ir.add(A, B), lambda a, b: a + b),
    "logsumexp-rows": (ir.logsumexp(A, 1), _lse(1)),
    "logsumexp-columns": (ir.logsumexp(A, 0), _lse(0)),
    "softmax-rows": (ir.softmax(A, 1), _softmax(1)),
    "softmax-columns": (ir.softmax(A, 0), _softmax(0)),
    "named": (ir.named("N_rule", A, sp.MatrixSymbol("N_rule", n, d)), lambda a: a),
    "solve": (ir.solve(S, R), _solve),
    "solve-rank3": (ir.solve(S, T3), _solve),
}


def _concrete(shape: tuple) -> tuple[int, ...]:
    return tuple(int(sp.sympify(s).subs(SIZES)) for s in shape)


def _value(leaf: ir.Leaf, rng: np.random.Generator) -> np.ndarray:
    value = rng.standard_normal(_concrete(leaf.shape))
    if leaf is S:  # well conditioned, so differences of the solve are accurate
        value = value * 0.3 + 3 * np.eye(value.shape[0])
    return value


def _operands(node: ir.Node) -> list[ir.Leaf]:
    """The operands the oracle takes: the leaves (a ``Ones`` operand is a constant)."""
    return [o for o in node.children() if isinstance(o, ir.Leaf)]


def _position(node: ir.Node, operand: ir.Leaf) -> int:
    return node.children().index(operand)


def _central(f: Callable, values: list[np.ndarray], k: int, direction: np.ndarray):
    plus = [v + STEP * direction if j == k else v for j, v in enumerate(values)]
    minus = [v - STEP * direction if j == k else v for j, v in enumerate(values)]
    return (f(*plus) - f(*minus)) / (2 * STEP)


def _evaluate(node: ir.Node, values: dict[str, np.ndarray]) -> np.ndarray:
    (result,) = evaluate([node], values, SIZES)
    return result


def _setup(case: str, seed: int = 0):
    node, f = CASES[case]
    rng = np.random.default_rng(seed)
    operands = _operands(node)
    values = [_value(o, rng) for o in operands]
    named_values = {o.name: v for o, v in zip(operands, values, strict=True)}
    return node, f, rng, operands, values, named_values


@pytest.mark.parametrize("case", sorted(CASES))
def test_reverse_rule_matches_finite_differences(case):
    node, f, rng, operands, values, named_values = _setup(case)
    adjoint = _leaf("G_rule", *node.shape)
    g = rng.standard_normal(_concrete(node.shape))
    for k_, operand in enumerate(operands):
        contribution = autodiff.VJP(node, adjoint, _position(node, operand))
        assert contribution.shape == operand.shape
        got = _evaluate(contribution, {**named_values, "G_rule": g})
        expected = np.zeros_like(values[k_])
        for index in np.ndindex(*values[k_].shape):
            e = np.zeros_like(values[k_])
            e[index] = 1.0
            expected[index] = np.sum(g * _central(f, values, k_, e))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8,
                                   err_msg=f"{case}: operand {k_}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_rule_matches_finite_differences(case):
    node, f, rng, operands, values, named_values = _setup(case)
    tangents = [_leaf(f"T{j}_rule", *o.shape) for j, o in enumerate(operands)]
    directions = [rng.standard_normal(v.shape) for v in values]
    tangent_values = {t.name: v for t, v in zip(tangents, directions, strict=True)}
    moved_sets = [set(range(len(operands)))] + (
        [{j} for j in range(len(operands))] if len(operands) > 1 else [])
    for moved in moved_sets:
        given: list = [None] * len(node.children())
        for j in moved:
            given[_position(node, operands[j])] = tangents[j]
        tangent = autodiff.JVP(node, given, ())
        got = _evaluate(tangent, {**named_values, **tangent_values})
        expected = sum(_central(f, values, j, directions[j]) for j in moved)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8,
                                   err_msg=f"{case}: moving operands {sorted(moved)}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_rule_with_seed_axes_matches_finite_differences(case):
    node, f, rng, operands, values, named_values = _setup(case)
    for k_, operand in enumerate(operands):
        jac = autodiff.jacobian(node, operand)
        assert jac.shape == node.shape + operand.shape
        got = _evaluate(jac, named_values)
        out_shape = _concrete(node.shape)
        for index in np.ndindex(*values[k_].shape):
            e = np.zeros_like(values[k_])
            e[index] = 1.0
            expected = _central(f, values, k_, e)
            np.testing.assert_allclose(
                got[(...,) + index].reshape(out_shape), expected, rtol=1e-6, atol=1e-8,
                err_msg=f"{case}: d/d operand {k_}{index}")


@pytest.mark.parametrize("leaf", [ir.ones((n, d)), ir.zero((n, d)), ir.identity(n), A],
                         ids=lambda node: type(node).__name__)
def test_leaves_end_both_modes(leaf):
    # A leaf has no operand: reverse mode never asks it for one, forward mode (unseeded) says
    # it is constant, and a node built over it alone has a zero Jacobian.
    with pytest.raises(IndexError):
        autodiff.VJP(leaf, ir.zero(leaf.shape), 0)
    assert autodiff.JVP(leaf, [], ()) is None
    assert ir.is_zero(autodiff.jacobian(leaf, B))


def test_the_identity_seed_is_the_jacobian_of_a_leaf():
    got = _evaluate(autodiff.jacobian(A, A), {"A_rule": np.zeros((3, 2))})
    expected = np.zeros((3, 2, 3, 2))
    for i, j in itertools.product(range(3), range(2)):
        expected[i, j, i, j] = 1.0
    np.testing.assert_array_equal(got, expected)
