"""Layer normalisation: each row standardised by its own mean and variance, then scaled.

For one example (a row x of d features): mu = mean(x), var = mean((x - mu)^2), and
y = gamma ⊙ (x - mu) / sqrt(var + eps) + beta, with a learnt scale gamma and shift beta per
feature (the mean and variance of seed article 3.3, applied to activations). The statistics
belong to the row, so every example is normalised alone, at training and at test time.

Written as named steps, the backward pass (the gradient of sum(G ⊙ A) with the upstream
gradient G) comes out in the textbook's form: dXhat = dA ⊙ gamma, and the gradient reaches
X directly and through the row mean and the row variance. eps is a scalar input (PyTorch's
default is 1e-5) and the variance is the biased one, as in torch.nn.functional.layer_norm.
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

mu = sp.MatrixSymbol("mu", n, 1)  # row means
C = sp.MatrixSymbol("C", n, d)  # centred rows
var = sp.MatrixSymbol("var", n, 1)  # row variances
R = sp.MatrixSymbol("r", n, 1)  # 1 / sqrt(var + eps)
Xhat = sp.MatrixSymbol("Xhat", n, d)
A = sp.MatrixSymbol("A", n, d)

LAYER = [
    (mu, symdl.mean(X, axis=1)),
    (C, X - symdl.broadcast(mu, n, d)),
    (var, symdl.mean(sp.HadamardPower(C, 2), axis=1)),
    (R, symdl.rsqrt(var + eps * sp.OneMatrix(n, 1))),
    (Xhat, sp.hadamard_product(C, symdl.broadcast(R, n, d))),
    (A, sp.hadamard_product(Xhat, symdl.bias(gamma, n)) + symdl.bias(beta, n)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """eps must be positive (var + eps is under a square root)."""
    return {"eps": np.asarray(10.0 ** rng.uniform(-5, -1))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, gamma, beta])
