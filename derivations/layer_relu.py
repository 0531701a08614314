"""ReLU activation layer: A = relu(X) entry by entry, backpropagated from G.

An activation layer is the scalar function relu applied to every entry (section 2.2 of the
seed article: each layer is one link of the chain rule). Its backward pass is the gradient of
sum(G ⊙ relu(X)) with the upstream gradient G: an elementwise product, no matrix product.

relu(x) = max(x, 0) has no derivative at 0; symdl states relu'(0) = 0 (Heaviside(x, 0), the
value PyTorch uses too), so dX = G ⊙ H(X) with H(0) = 0.
"""

import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
G = sp.MatrixSymbol("G", n, d)  # the upstream gradient dL/dA
A = sp.MatrixSymbol("A", n, d)

LAYER = [
    (A, symdl.relu(X)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X])
