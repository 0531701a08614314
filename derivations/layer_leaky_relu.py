"""Leaky ReLU layer: A = x for x > 0 and a x otherwise, with the slope a as a symbol.

Leaky ReLU keeps a small gradient a on the negative side, so units never die. Written as
a X + (1 - a) relu(X) it needs no new primitive, the slope a stays a scalar input (one
derivation for every slope), and the derivative is a + (1 - a) H(X) with H(0) = 0: at 0 the
derivative is taken as the slope a, as PyTorch does. The slope gets its own gradient,
sum(G ⊙ min(X, 0)), which is what a learnable slope (PReLU) trains on. The backward pass is
the gradient of sum(G ⊙ A) with the upstream gradient G (chain rule, seed article 2.2).
"""

import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
G = sp.MatrixSymbol("G", n, d)  # the upstream gradient dL/dA
A = sp.MatrixSymbol("A", n, d)
a = sp.Symbol("a", real=True)  # the negative-side slope (0.01 in PyTorch's default)

LAYER = [
    (A, symdl.leaky_relu(X, a)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, a])
