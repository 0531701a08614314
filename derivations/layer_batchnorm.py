"""Batch normalisation in training mode: each column standardised over the batch.

For each feature j (a column of the batch X, n examples): mu_j = mean of the column,
var_j = its biased variance, and y = gamma ⊙ (x - mu) / sqrt(var + eps) + beta (seed
article 3.3 names batch normalisation as the use of mean and variance on activations). In
training mode the statistics are those of the current batch, so they depend on every
example: the backward pass (the gradient of sum(G ⊙ A) with the upstream gradient G) carries
the two batch-mean terms of the textbook formula,

    dX = r ⊙ (dXhat - mean(dXhat) - Xhat ⊙ mean(dXhat ⊙ Xhat)),  r = 1 / sqrt(var + eps),

column by column. eps is a scalar input (PyTorch's default is 1e-5); running statistics for
evaluation mode are bookkeeping outside the derivative.
"""

import numpy as np
import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
gamma = sp.MatrixSymbol("gamma", 1, d)
beta = sp.MatrixSymbol("beta", 1, d)
G = sp.MatrixSymbol("G", n, d)  # the upstream gradient dL/dA
eps = sp.Symbol("eps", positive=True)

mu = sp.MatrixSymbol("mu", 1, d)  # column (batch) means
C = sp.MatrixSymbol("C", n, d)
var = sp.MatrixSymbol("var", 1, d)  # column (batch) variances
R = sp.MatrixSymbol("r", 1, d)  # 1 / sqrt(var + eps)
Xhat = sp.MatrixSymbol("Xhat", n, d)
A = sp.MatrixSymbol("A", n, d)

LAYER = [
    (mu, symdl.mean(X, axis=0)),
    (C, X - symdl.broadcast(mu, n, d)),
    (var, symdl.mean(sp.HadamardPower(C, 2), axis=0)),
    (R, symdl.rsqrt(var + eps * sp.OneMatrix(1, d))),
    (Xhat, sp.hadamard_product(C, symdl.broadcast(R, n, d))),
    (A, sp.hadamard_product(Xhat, symdl.bias(gamma, n)) + symdl.bias(beta, n)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """eps must be positive (var + eps is under a square root)."""
    return {"eps": np.asarray(10.0 ** rng.uniform(-5, -1))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, gamma, beta])
