"""2 x 2 max pooling: P = maxpool(X), backpropagated from G.

Each 2 x 2 window of each channel keeps its largest entry (stride 2: a 4 x 4 image becomes 2 x
2). The maximum is differentiable wherever a window has one largest entry, and its derivative
sends the upstream gradient to that entry:

    dX = maxpoolᵀ(G | X)      (G[b, i, j, c] added at the arg max of window (i, j))

On ties the derivative goes to the first largest entry of the window in row-major order,
PyTorch's convention (as relu's derivative at 0 is taken as 0): a subgradient.
"""

import numpy as np
import sympy as sp

import symdl

n, c = sp.symbols("n c", integer=True, positive=True)
X = sp.IndexedBase("X", shape=(n, 4, 4, c))  # channels last
G = sp.IndexedBase("G", shape=(n, 2, 2, c))  # the upstream gradient dL/dP
P = sp.IndexedBase("P", shape=(n, 2, 2, c))
b, i, j, q = sp.symbols("b i j q", integer=True)

LAYER = [
    (P, symdl.max_pool2d(X, 2)),
    (sp.Symbol("L"), sp.Sum(G[b, i, j, q] * P[b, i, j, q], (b, 0, n - 1), (i, 0, 1),
                            (j, 0, 1), (q, 0, c - 1))),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Distinct entries, at least 0.5 apart: each window has one largest entry with a margin,
    so that finite differences do not cross a change of arg max (where the derivative
    jumps)."""
    size = dims["n"] * 16 * dims["c"]
    return {"X": (rng.permutation(size) * 0.5 - size / 4).reshape(dims["n"], 4, 4, dims["c"])}


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X])
