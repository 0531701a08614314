"""Softmax layer: each row of A = softmax(X) is a probability distribution.

softmax(x)_j = exp(x_j) / Σ_l exp(x_l), the output layer of a classifier (seed article 3.1,
the categorical distribution). Its Jacobian per row is diag(s) - s s^T, so the backward pass
(the gradient of sum(G ⊙ A) with the upstream gradient G) never forms it:

    dX = A ⊙ (G - (A ⊙ G) 1 1^T),

the upstream gradient minus its average under the row's distribution, times the row. symdl
evaluates softmax with a max shift per row, so large logits do not overflow.
"""

import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, k)
G = sp.MatrixSymbol("G", n, k)  # the upstream gradient dL/dA
A = sp.MatrixSymbol("A", n, k)

LAYER = [
    (A, symdl.softmax(X)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X])
