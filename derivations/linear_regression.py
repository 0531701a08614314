"""Linear regression: least squares ‖X w - y‖², its gradient and Hessian.

The gradient 2 X^T (X w - y) vanishes at the normal equations X^T X w = X^T y; the Hessian
2 X^T X does not depend on w.
"""

import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
y = sp.MatrixSymbol("y", n, 1)
w = sp.MatrixSymbol("w", d, 1)

residual = X * w - y
LOSS = symdl.total(sp.hadamard_product(residual, residual))


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[w], hessian=True)
