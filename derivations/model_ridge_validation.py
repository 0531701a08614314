"""Ridge regression tuned by gradient: the validation loss of the ridge solution in lambda.

Ridge regression (the MAP estimate of model_map_gaussian_prior) has the closed form
w(lam) = (X^T X + lam I)^{-1} X^T y on the training set. How well it generalises is the
validation loss L(lam) = ‖Xv w(lam) - yv‖² / 2 on held-out data, a function of lam through a
matrix inverse. The derivative of an inverse (seed article 1.2 and 2.2) is

    d(A^{-1}) = -A^{-1} dA A^{-1},

so with A = X^T X + lam I (dA/dlam = I) and the validation residual r,

    dL/dlam = -(A^{-1} Xv^T r)^T w,

the "hypergradient" that tunes lam by gradient descent instead of a grid search; the second
derivative follows by forward mode through the same solve. symdl computes A^{-1} b as a
linear solve (LU through LAPACK), never the inverse itself, and shares one factorisation-free
formula between the value and its derivatives. A must be invertible (lam > 0 makes it so).
"""

import numpy as np
import sympy as sp

import symdl

n, m, d = sp.symbols("n m d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # training features
y = sp.MatrixSymbol("y", n, 1)  # training targets
Xv = sp.MatrixSymbol("Xv", m, d)  # validation features
yv = sp.MatrixSymbol("yv", m, 1)  # validation targets
lam = sp.Symbol("lambda", positive=True)  # ridge penalty
w = sp.MatrixSymbol("w", d, 1)  # the ridge solution
r = sp.MatrixSymbol("r", m, 1)  # validation residuals

MODEL = [
    (w, (X.T * X + lam * sp.Identity(d)).inv() * X.T * y),
    (r, Xv * w - yv),
    (sp.Symbol("L"), symdl.total(sp.HadamardPower(r, 2)) / 2),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A positive penalty (X^T X + lam I is then invertible)."""
    return {"lambda": np.asarray(rng.uniform(0.5, 2.0))}


def derivation() -> symdl.Derivation:
    return symdl.derive(MODEL, wrt=[lam], hessian=True)
