"""Softplus activation layer: A = softplus(X) entry by entry, backpropagated from G.

An activation layer is the scalar function softplus applied to every entry (section 2.2 of the
seed article: each layer is one link of the chain rule). Its backward pass is the gradient of
sum(G ⊙ softplus(X)) with the upstream gradient G: an elementwise product, no matrix product.

softplus(x) = log(1 + exp(x)) is evaluated as max(x, 0) + log1p(exp(-
"""

import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
G = sp.MatrixSymbol("G", n, d)  # the upstream gradient dL/dA
A = sp.MatrixSymbol("A", n, d)

LAYER = [
    (A, symdl.softplus(X)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X])
