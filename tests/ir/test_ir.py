"""The IR's smart constructors: what they simplify is what keeps derivatives small."""

from __future__ import annotations

import numpy as np
import sympy as sp

import symdl
from symdl import ir
from symdl.printing.plain import plain

n, d, k = sp.symbols("n d k", integer=True, positive=True)
X = ir.leaf("X", (n, d), sp.MatrixSymbol("X", n, d))
W = ir.leaf("W", (d, k), sp.MatrixSymbol("W", d, k))


def test_equal_products_are_one_object() -> None:
    first = ir.einsum([X, W], [(0, 1), (1, 2)], (0, 2))
    assert first is ir.einsum([X, W], [(5, 7), (7, 9)], (5, 9))


def test_summed_kronecker_delta_is_eliminated_by_renaming() -> None:
    product = ir.einsum([X, ir.identity(d)], [(0, 1), (1, 2)], (0, 2))
    assert product is X


def test_delta_between_two_free_indices_stays() -> None:
    outer = ir.einsum([ir.identity(d), ir.identity(k)], [(0, 2), (1, 3)], (0, 1, 2, 3))
    assert any(isinstance(op, ir.Identity) for op in outer.operands)


def test_trace_of_identity_is_the_dimension() -> None:
    trace = ir.einsum([ir.identity(d)], [(0, 0)], ())
    assert ir.is_scalar_constant(trace) and trace.coeff == d


def test_ones_summed_alone_become_a_factor() -> None:
    total = ir.einsum([X, ir.ones((k,))], [(0, 1), (2,)], (0, 1))
    assert isinstance(total, ir.Einsum) and total.coeff == k and len(total.operands) == 1


def test_sums_merge_coefficients_and_cancel() -> None:
    assert ir.is_zero(ir.add(X, ir.scale(X, -1)))
    twice = ir.add(X, X)
    assert isinstance(twice, ir.Einsum) and twice.coeff == 2


def test_equal_lambdas_intern_to_one_map() -> None:
    a, b = sp.Dummy("a"), sp.Dummy("b")
    assert ir.map_(sp.Lambda(a, sp.tanh(a)), X) is ir.map_(sp.Lambda(b, sp.tanh(b)), X)


def test_hand_written_logsumexp_is_stable() -> None:
    Z, Y = sp.MatrixSymbol("Z", n, k), sp.MatrixSymbol("Y", n, k)
    lse = symdl.log(symdl.sum(symdl.exp(Z), axis=1))
    der = symdl.derive(symdl.mean(lse) - symdl.total(sp.hadamard_product(Y, Z)) / n, wrt=[Z])
    assert plain(der.gradient(Z)) == "(softmax(Z) - Y)/n"
    logits = np.array([[1000.0, 0.0, -5.0], [3.0, 2.0, -1000.0]])
    labels = np.eye(3)[[0, 2]]
    result = der.evaluate({"Z": logits, "Y": labels})
    assert np.isfinite(result["value"]) and np.all(np.isfinite(result["grad:Z"]))
    # Row 0: softmax is (1, 0, 0) and the label is class 0, so the loss and gradient vanish.
    np.testing.assert_allclose(result["grad:Z"][0], 0.0, atol=1e-300)
    expected = 0.5 * (1000.0 + np.log1p(np.exp(-1.0) + np.exp(-1003.0)) + 3.0)
    np.testing.assert_allclose(result["value"], expected, rtol=1e-12)


def _one_node_of_each_kind() -> list[ir.Node]:
    n = sp.Symbol("n", integer=True, positive=True)
    A = ir.leaf("A", (n, n), sp.MatrixSymbol("A", n, n))
    B = ir.leaf("B", (n, n), sp.MatrixSymbol("B", n, n))
    x, y = sp.symbols("x y")
    product = ir.einsum([A, B], [(0, 1), (1, 2)], (0, 2))
    mapped = ir.map_(sp.Lambda((x, y), x * sp.tanh(y)), A, B)
    total = ir.add(A, product)
    return [A, ir.ones((n, n)), ir.zero((n, n)), ir.identity(n), product, mapped, total,
            ir.logsumexp(mapped, 1), ir.softmax(total, 0), ir.solve(A, B),
            ir.det(total, log=True, spd=False),
            ir.named("Z", total, sp.MatrixSymbol("Z", n, n)),
            ir.matrix_function(total, "eigvalsh"), _a_scan(n, A, B, product)]


def _a_scan(n, A, B, sequence) -> ir.Node:
    """c_t = c_{t-1} ⊙ x_t (broadcast over rows) + B over the n rows x_t of ``sequence``."""
    carry = ir.leaf("c_prev", (n, n), sp.MatrixSymbol("c_prev", n, n))
    row = ir.leaf("x_t", (n,), sp.IndexedBase("x_t", shape=(n,)))
    step = ir.add(ir.einsum([carry, row], [(0, 1), (1,)], (0, 1)), B)
    return ir.scan(carry=(carry,), init=(A,), step=(step,), slots=(row,), seqs=(sequence,),
                   emit=step, length=n)


def test_every_node_kind_rebuilds_over_its_own_children() -> None:
    """``ir.rebuilt`` (the REBUILD table) over the same children gives back the
    same interned node, over new ones the same operation (here: A and B swapped)."""
    nodes = _one_node_of_each_kind()
    kinds = {type(node) for node in nodes}
    assert kinds == {cls for cls in vars(ir.nodes).values()
                     if isinstance(cls, type) and issubclass(cls, ir.Node) and cls is not ir.Node}
    for node in nodes:
        assert ir.rebuilt(node, list(node.children())) is node
        # Over opaque stand-ins for its children, a node is the same kind of node over them.
        stand_ins = [ir.named(f"c{k}", c, sp.MatrixSymbol(f"c{k}", *c.shape))
                     for k, c in enumerate(node.children())]
        if stand_ins:
            new = ir.rebuilt(node, stand_ins)
            assert type(new) is type(node) and list(new.children()) == stand_ins, node
    n = nodes[0].shape[0]
    A, B = nodes[0], ir.leaf("B", (n, n), sp.MatrixSymbol("B", n, n))
    swapped = ir.rebuilt(nodes[4], [B, A])
    assert swapped is ir.einsum([B, A], [(0, 1), (1, 2)], (0, 2))
