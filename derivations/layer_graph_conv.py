"""Graph convolution layer: A = Â X W, with the normalised adjacency Â an input.

A graph of n nodes with adjacency matrix M (seed article 5.3, graph theory) gets self-loops
and a symmetric degree normalisation, Â = D^{-1/2} (M + I) D^{-1/2} with D the degree matrix
of M + I (Kipf and Welling's GCN). Each node's new features are the degree-weighted average
of its neighbours' features X, mixed by the weights W. Â depends only on the graph, so it is
computed once (``normalized_adjacency`` below) and enters the layer as an input.

The backward pass (the gradient of sum(G ⊙ A) with the upstream gradient G) sends the
gradient back along the edges: dX = Â^T G W^T and dW = X^T Â^T G.
"""

import numpy as np
import sympy as sp

import symdl

n, d, k = sp.symbols("n d k", integer=True, positive=True)
Ahat = sp.MatrixSymbol("Ahat", n, n)  # the normalised adjacency with self-loops
X = sp.MatrixSymbol("X", n, d)  # node features, one row per node
W = sp.MatrixSymbol("W", d, k)
G = sp.MatrixSymbol("G", n, k)  # the upstream gradient dL/dA
A = sp.MatrixSymbol("A", n, k)

LAYER = [
    (A, Ahat * X * W),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def normalized_adjacency(adjacency: np.ndarray) -> np.ndarray:
    """D^{-1/2} (M + I) D^{-1/2} for a symmetric 0/1 (or non-negative) adjacency M."""
    m = np.asarray(adjacency, dtype=float) + np.eye(adjacency.shape[0])
    scale = 1.0 / np.sqrt(m.sum(axis=1))
    return scale[:, None] * m * scale[None, :]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Ahat from a random undirected graph without self-loops."""
    size = dims["n"]
    upper = np.triu(rng.random((size, size)) < 0.4, 1)
    return {"Ahat": normalized_adjacency((upper | upper.T).astype(float))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, W])
