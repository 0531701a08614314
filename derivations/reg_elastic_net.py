"""Elastic net: lam (alpha ‖W‖₁ + (1 - alpha)/2 ‖W‖²), a mix of the L1 and L2 penalties.

The two regularisers of seed article 4.3 combined (as in scikit-learn's ElasticNet and
glmnet): the L1 part gives sparsity, the L2 part keeps correlated features together and the
problem strictly convex. alpha in [0, 1] sets the mix (1: lasso, 0: ridge). The subgradient
takes sign(0) = 0, as reg_l1 states:

    dW = lam (alpha sign(W) + (1 - alpha) W).

Both hyperparameters stay symbols, and the penalty is differentiated with respect to them too.
"""

import numpy as np
import sympy as sp

import symdl

d, k = sp.symbols("d k", integer=True, positive=True)
W = sp.MatrixSymbol("W", d, k)  # weights
lam = sp.Symbol("lambda", positive=True)  # overall strength
alpha = sp.Symbol("alpha", positive=True)  # share of L1

PENALTY = lam * (alpha * symdl.total(symdl.absolute(W))
                 + (1 - alpha) / 2 * symdl.total(sp.HadamardPower(W, 2)))


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A mix in [0, 1] and a positive strength."""
    return {"alpha": np.asarray(rng.uniform(0.1, 0.9)), "lambda": np.asarray(rng.uniform(0.1, 2))}


def derivation() -> symdl.Derivation:
    return symdl.derive(PENALTY, wrt=[W, lam, alpha])
