"""Dense layer: A = X W + 1 b, backpropagated from an upstream gradient G.

A layer's backward pass is the gradient of the scalar sum(G ⊙ layer(X)): G stands for the
gradient of whatever loss sits above the layer, and differentiating the inner product with
it gives exactly the vector-Jacobian products backprop needs (the chain rule of section 2.2
of the seed article, "Backpropagation's Secret Sauce"). For the dense layer Z = XW + b of
section 1.2 they are the three textbook lines

    dX = G W^T,      dW = X^T G,      db = 1^T G

for every batch size n, input width d and output width k.
"""

import sympy as sp

import symdl

n, d, k = sp.symbols("n d k", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # a batch of inputs, one row per example
W = sp.MatrixSymbol("W", d, k)
b = sp.MatrixSymbol("b", 1, k)
G = sp.MatrixSymbol("G", n, k)  # the upstream gradient dL/dA
A = sp.MatrixSymbol("A", n, k)

LAYER = [
    (A, X * W + symdl.bias(b, n)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, W, b])
