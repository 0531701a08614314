"""Logistic regression: binary cross-entropy with logits, its gradient and Hessian.

With z = X w, the loss mean(softplus(z) - y ⊙ z) is the binary cross-entropy
-y log σ(z) - (1 - y) log(1 - σ(z)) written without overflow. Its gradient is
X^T (σ(X w) - y) / n, and its Hessian X^T diag(σ ⊙ (1 - σ)) X / n is what Newton's method
inverts.
"""

import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
y = sp.MatrixSymbol("y", n, 1)
w = sp.MatrixSymbol("w", d, 1)

LOSS = symdl.binary_cross_entropy_with_logits(X * w, y)


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[w], hessian=True)
