"""``symdl.ir.shape.squeeze``: size-1 axes dropped, values unchanged (oracle: NumPy)."""

from __future__ import annotations

import numpy as np
import sympy as sp

from symdl import ir
from symdl.ir.evaluate import evaluate
from symdl.ir.shape import squeeze


def test_squeeze_drops_size_one_axes_of_products_and_sums():
    n = sp.Symbol("n", integer=True, positive=True)
    a = ir.leaf("a", (n, 1), sp.MatrixSymbol("a", n, 1))
    b = ir.leaf("b", (1, n), sp.MatrixSymbol("b", 1, n))
    outer = ir.einsum([a, b], [(0, 1), (2, 3)], (0, 1, 2, 3))  # n x 1 x 1 x n
    total = ir.add(outer, ir.einsum([a, a], [(0, 1), (3, 2)], (0, 1, 2, 3)))
    av, bv = np.arange(1.0, 4.0).reshape(3, 1), np.array([[2.0, -1.0, 0.5]])
    for node, want in ((outer, np.outer(av, bv)), (total, np.outer(av, bv) + np.outer(av, av))):
        squeezed = squeeze(node)
        assert squeezed.shape == (n, n)
        (got,) = evaluate([squeezed], {"a": av, "b": bv}, {n: 3})
        np.testing.assert_array_equal(got, want)
    assert squeeze(a).shape == (n,) and squeeze(squeeze(a)) is squeeze(a)
