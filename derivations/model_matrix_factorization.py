"""Matrix factorisation for recommendation: ‖M ⊙ (R - U V^T)‖² / nnz + λ(‖U‖² + ‖V‖²).

A recommender (seed article 1.3: the SVD and its use in recommender systems) predicts the
rating of user i for item j as the inner product of a user factor row U_i and an item factor
row V_j, R ≈ U V^T with k factors. Only some ratings are observed: the mask M is 1 where
R is known and 0 elsewhere, and ``nnz`` (the number of observed entries, an input) averages
over them. With E = M ⊙ (U V^T - R), the masked error,

    dU = 2 E V / nnz + 2 λ U,      dV = 2 E^T U / nnz + 2 λ V.

Without the mask and the penalty the minimum is the truncated SVD (Eckart-Young); with
them there is no closed form, and alternating least squares or gradient descent on these
gradients is what recommenders run. No new primitive is needed: a Hadamard product with the
mask and two matrix products.
"""

import numpy as np
import sympy as sp

import symdl

n, p, k = sp.symbols("n p k", integer=True, positive=True)
R = sp.MatrixSymbol("R", n, p)  # ratings (anything where M is 0)
M = sp.MatrixSymbol("M", n, p)  # mask of observed ratings, 0 or 1
U = sp.MatrixSymbol("U", n, k)  # user factors
V = sp.MatrixSymbol("V", p, k)  # item factors
E = sp.MatrixSymbol("E", n, p)  # masked errors
nnz = sp.Symbol("nnz", positive=True)  # the number of observed ratings
lam = sp.Symbol("lambda", positive=True)  # the penalty

LOSS = [
    (E, sp.hadamard_product(M, U * V.T - R)),
    (sp.Symbol("L"), symdl.total(sp.HadamardPower(E, 2)) / nnz
     + lam * (symdl.total(sp.HadamardPower(U, 2)) + symdl.total(sp.HadamardPower(V, 2)))),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A mask with about 60% of the ratings observed, and its count."""
    mask = (rng.uniform(size=(dims["n"], dims["p"])) < 0.6).astype(float)
    mask[0, 0] = 1.0
    return {"M": mask, "nnz": float(mask.sum())}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[U, V])
