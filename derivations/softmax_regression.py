"""Softmax regression with L2 weight decay: multinomial logistic regression.

Logits Z = X W + 1 b over k classes, softmax cross-entropy against one-hot labels, and a
penalty (λ/2) ‖W‖². The gradient of W is X^T (softmax(Z) - Y) / n + λ W; the weight decay λ
is a parameter too, so its derivative ‖W‖²/2 is derived as well.
"""

import sympy as sp

import symdl

n, d, k = sp.symbols("n d k", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
Y = sp.MatrixSymbol("Y", n, k)
W, b = sp.MatrixSymbol("W", d, k), sp.MatrixSymbol("b", 1, k)
lam = sp.Symbol("lambda", positive=True)

Z = sp.MatrixSymbol("Z", n, k)
L = sp.Symbol("L")

MODEL = [
    (Z, X * W + symdl.bias(b, n)),
    (L, symdl.softmax_cross_entropy(Z, Y) + lam / 2 * symdl.total(sp.hadamard_product(W, W))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(MODEL, wrt=[W, b, lam])
