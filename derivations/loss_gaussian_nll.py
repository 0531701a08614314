"""Gaussian negative log-likelihood: mean((log v + (mu - y)² / v + log 2π) / 2).

A regression network that predicts a mean mu and a variance v per output models its target
as y ~ N(mu, v) (the Gaussian of seed article 3.1); training maximises the likelihood, i.e.
minimises -log N(y | mu, v) = (log v + (y - mu)² / v + log 2π) / 2, averaged over every
entry (PyTorch's gaussian_nll_loss with full=True). The gradients

    dmu = (mu - y) / (v n k),     dv = (1 / v - (mu - y)² / v²) / (2 n k)

show the trade-off: a larger v discounts the squared error but pays log v. v must be
positive (in practice the output of a softplus or an exp).
"""

import numpy as np
import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
mu = sp.MatrixSymbol("mu", n, k)  # predicted means
v = sp.MatrixSymbol("v", n, k)  # predicted variances, > 0
T = sp.MatrixSymbol("T", n, k)  # targets
R = sp.MatrixSymbol("R", n, k)  # residuals

LOSS = [
    (R, mu - T),
    (sp.Symbol("L"), symdl.mean(
        symdl.log(v) + sp.hadamard_product(sp.HadamardPower(R, 2), sp.HadamardPower(v, -1))
        + sp.log(2 * sp.pi) * sp.OneMatrix(n, k)) / 2),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Positive variances."""
    return {"v": rng.uniform(0.2, 2.0, (dims["n"], dims["k"]))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[mu, v, T])
