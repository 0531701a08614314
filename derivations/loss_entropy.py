"""Entropy of categorical distributions given as probabilities: mean over rows of -Σ p log p.

Entropy (seed article 3.4) measures the uncertainty of a distribution: log k for the uniform
distribution over k classes, 0 for a certain outcome. For a batch P of n distributions, one
per row, H = -(1/n) Σ_ij P_ij log P_ij, and its gradient treats the entries as free:

    dP = -(log P + 1) / n.

On the probability simplex (rows summing to one) the constant -1/n is orthogonal to every
feasible direction, so only -log P / n matters there. The entries must be positive: at
p = 0 the term p log p has the limit 0 but log p does not exist; give logits to
loss_entropy_logits instead when probabilities can underflow.
"""

import numpy as np
import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
P = sp.MatrixSymbol("P", n, k)  # one distribution per row, entries > 0

x = sp.Symbol("x", positive=True)
# p log p as one scalar function, so its derivative simplifies to log p + 1.
LOSS = -symdl.total(P.applyfunc(sp.Lambda(x, x * sp.log(x)))) / n


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Positive rows that sum to one."""
    p = rng.uniform(0.05, 1.0, (dims["n"], dims["k"]))
    return {"P": p / p.sum(axis=1, keepdims=True)}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[P])
