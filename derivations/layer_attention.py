"""Single-head scaled dot-product attention: softmax(Q K^T / sqrt(d_k)) V.

A sequence of n tokens X (n x d) is projected to queries Q = X Wq, keys K = X Wk and values
V = X Wv. Each token's output is an average of the values, weighted by the softmax over the
other tokens of its query's dot products with their keys (the matrix products of seed
article 1.2 and the softmax distribution of 3.1); dividing by sqrt(d_k) keeps the scores'
variance near one, so the softmax does not saturate as d_k grows.

The backward pass (the gradient of sum(G ⊙ O) with the upstream gradient G) is the
transformer's: dV = P^T dO, dP = dO V^T, the softmax's dS = P ⊙ (dP - rowsum(P ⊙ dP)),
dQ = dS K / sqrt(d_k), dK = dS^T Q / sqrt(d_k), and the three projections' weight
gradients X^T dQ, X^T dK, X^T dV; dX collects all three paths.
"""

import sympy as sp

import symdl

n, d, dk, dv = sp.symbols("n d d_k d_v", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # one row per token
Wq = sp.MatrixSymbol("Wq", d, dk)
Wk = sp.MatrixSymbol("Wk", d, dk)
Wv = sp.MatrixSymbol("Wv", d, dv)
G = sp.MatrixSymbol("G", n, dv)  # the upstream gradient dL/dO

Q, K = sp.MatrixSymbol("Q", n, dk), sp.MatrixSymbol("K", n, dk)
V = sp.MatrixSymbol("V", n, dv)
S = sp.MatrixSymbol("S", n, n)  # scaled scores
P = sp.MatrixSymbol("P", n, n)  # attention weights, rows sum to one
O = sp.MatrixSymbol("O", n, dv)  # noqa: E741 - the attention output

LAYER = [
    (Q, X * Wq),
    (K, X * Wk),
    (V, X * Wv),
    (S, Q * K.T / sp.sqrt(dk)),
    (P, symdl.softmax(S)),
    (O, P * V),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, O))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, Wq, Wk, Wv])
